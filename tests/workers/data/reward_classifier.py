"""Quality reward (test fixture): a text-classification pipeline over a local classifier.

The model directory comes from $REWARD_CLASSIFIER_DIR. Module-level setup (building the
pipeline) must run once; each run appends a line to $REWARD_SETUP_COUNTER when set.
"""

import os

import torch
from transformers import pipeline

if os.environ.get("REWARD_SETUP_COUNTER"):
    with open(os.environ["REWARD_SETUP_COUNTER"], "a", encoding="utf-8") as fh:
        fh.write("setup\n")

classifier = pipeline("text-classification", model=os.environ["REWARD_CLASSIFIER_DIR"], device="cpu")


def reward_func(queries, prompts, labels):
    results = classifier(list(queries), top_k=None)
    probs = []
    for per_label in results:
        by_label = {r["label"]: r["score"] for r in per_label}
        probs.append(by_label["LABEL_1"])
    rewards = torch.tensor(probs, dtype=torch.float32)
    short = torch.tensor([len((q[len(p):] if q.startswith(p) else q).split()) < 3
                          for q, p in zip(queries, prompts)])
    rewards = torch.where(short, rewards * 0.5, rewards)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"short_ratio": short.float().mean()}}
