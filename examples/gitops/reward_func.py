"""Keyword reward for the GitOps example, written to OpenRLHF's reward_func API.

``queries`` are prompt + response, ``prompts`` the prompts alone, ``labels`` the dataset's label
column — here the word a good answer must contain. A response earns 1.0 when it contains the
word (case-insensitive), minus a small penalty for every 100 characters past 400, and 0.0
otherwise. ``scores`` are the rewards clamped to [0, 1] for dynamic filtering.
"""

import torch

MAX_CHARS = 400
PENALTY_PER_100_CHARS = 0.05


def reward_func(queries, prompts, labels):
    rewards, hits, lengths = [], [], []
    for query, prompt, label in zip(queries, prompts, labels):
        response = query[len(prompt):] if query.startswith(prompt) else query
        found = str(label).strip().lower() in response.lower()
        overflow = max(len(response) - MAX_CHARS, 0)
        reward = (1.0 if found else 0.0) - PENALTY_PER_100_CHARS * (overflow / 100.0)
        rewards.append(reward)
        hits.append(1.0 if found else 0.0)
        lengths.append(float(len(response)))
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards.clamp(0.0, 1.0),
        "extra_logs": {
            "keyword_hit": torch.tensor(hits, dtype=torch.float32),
            "response_chars": torch.tensor(lengths, dtype=torch.float32),
        },
    }
