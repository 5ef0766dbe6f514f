"""Quickstart reward: the fraction of response characters that are the target letter.

Written to OpenRLHF's reward_func API (queries = prompt + response, prompts, labels). The
label is the target letter. A random-init model writes almost no 'a' (about 1 byte in 256);
the policy learns to write more of them within a few dozen steps, so the curve climbs from
~0 towards 1. `scores` (in [0, 1]) equal the rewards.
"""

import torch


def reward_func(queries, prompts, labels):
    rewards, lengths = [], []
    for query, prompt, target in zip(queries, prompts, labels):
        response = query[len(prompt):]
        hits = sum(1 for ch in response if ch == target)
        rewards.append(hits / max(len(response), 1))
        lengths.append(len(response))
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {
            "all_target": (rewards == 1.0).float(),
            "response_chars": torch.tensor(lengths, dtype=torch.float32),
        },
    }
