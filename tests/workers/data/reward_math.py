"""Math reward (test fixture): GSM8K "#### 42" or "the answer is 42" against the label."""

import re

import torch

_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\$?(-?[\d,]*\.?\d+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*\$?(-?[\d,]*\.?\d+)")


def _response(query: str, prompt: str) -> str:
    return query[len(prompt):] if query.startswith(prompt) else query


def _extract(text: str):
    # The last "####" wins (GSM8K); fall back to the last "answer is".
    for pattern in (_HASHES, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return found[-1].replace(",", "")
    return None


def reward_func(queries, prompts, labels):
    correct, formatted = [], []
    for query, prompt, label in zip(queries, prompts, labels):
        answer = _extract(_response(query, prompt))
        formatted.append(answer is not None)
        try:
            ok = answer is not None and abs(float(answer) - float(str(label).replace(",", ""))) < 1e-6
        except ValueError:
            ok = False
        correct.append(ok)
    correct_t = torch.tensor(correct, dtype=torch.float32)
    formatted_t = torch.tensor(formatted, dtype=torch.float32)
    # 1 correct, 0 wrong, -0.5 no parseable answer
    rewards = torch.where(formatted_t > 0, correct_t, torch.full_like(correct_t, -0.5))
    return {
        "rewards": rewards,
        "scores": correct_t,
        "extra_logs": {"accuracy": correct_t.mean(), "formatted": formatted_t, "n": len(queries)},
    }
