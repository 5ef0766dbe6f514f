"""Reward generated Python code by running the tests that come with each prompt.

The label of each sample holds pytest test functions; the response is the candidate
implementation. Both go into one file, pytest runs it in a subprocess with a timeout,
and the outcome becomes the reward:

    all tests pass   1.0        some fail   0.3
    nothing ran      0.0        timeout    -0.5        crash/syntax error   -1.0
"""

import os
import subprocess
import sys
import tempfile

import torch

TIMEOUT_S = 10


def _outcome(code: str, tests: str) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "test_candidate.py")
        with open(path, "w") as handle:
            handle.write(code + "\n\n" + (tests or "") + "\n")
        try:
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                capture_output=True, text=True, timeout=TIMEOUT_S, cwd=workdir,
            )
        except subprocess.TimeoutExpired:
            return -0.5
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    if run.returncode == 0 and "passed" in summary:
        return 1.0
    if "passed" in summary or "failed" in summary:
        return 0.3 if "passed" in summary else 0.0
    if "error" in summary.lower():
        return -1.0
    return 0.0


def reward_func(queries, prompts, labels):
    rewards = []
    for query, prompt, tests in zip(queries, prompts, labels):
        response = query[len(prompt):] if query.startswith(prompt) else query.split(prompt)[-1]
        rewards.append(_outcome(response.strip(), tests))
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": (rewards + 1.0) / 2.0,
        "extra_logs": {"pass_rate": (rewards == 1.0).float().mean()},
    }
