"""GSM8K-style math reward: compare the response's final number with the label.

Accepted answer formats: "#### 42" (GSM8K) and "the answer is 42" / "= 42".
Correct 1.0, wrong number 0.0, no parsable answer -0.5.
"""

import re

import torch

_GSM8K = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_STATED = re.compile(r"(?:answer is:?|=)\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)


def final_number(text: str):
    found = _GSM8K.findall(text) or _STATED.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def reward_func(queries, prompts, labels):
    rewards = []
    for query, prompt, label in zip(queries, prompts, labels):
        response = query[len(prompt):] if query.startswith(prompt) else query
        answer = final_number(response)
        expected = final_number(str(label)) if "####" in str(label) else float(str(label).replace(",", ""))
        if answer is None:
            rewards.append(-0.5)
        else:
            rewards.append(1.0 if abs(answer - expected) < 1e-6 else 0.0)
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": (rewards + 0.5) / 1.5,
        "extra_logs": {
            "accuracy": (rewards == 1.0).float().mean(),
            "formatted": (rewards >= 0.0).float().mean(),
        },
    }
