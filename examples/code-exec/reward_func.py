"""Reward generated Python code by running the tests that come with each prompt, on the sandbox API.

The label of each sample holds pytest test functions; the response is the candidate
implementation. Both go into one file that pytest runs through ``rlhf_workers.sandbox.run``:
a fresh directory per run, its own timeout (the whole process group is killed at it) and
limits of its own (CPU, memory, processes, file size, bounded output). In training the reward
already runs in the job's sandbox, so the programs it starts also have no network and cannot
write outside scratch.

How the run ended becomes the reward (the seed's code-generation example):

    all tests pass   1.0        some fail   0.3        nothing ran   0.0
    timeout         -0.5        crash (syntax error, killed by a limit or a signal)   -1.0
"""

import sys

import torch

from rlhf_workers.sandbox.limits import Limits
from rlhf_workers.sandbox.run import run_command

TIMEOUT_S = 5
LIMITS = Limits(cpu_seconds=TIMEOUT_S, memory_mb=1024, max_processes=32, file_size_mb=8, output_kb=32)


def outcome_reward(code: str, tests: str) -> float:
    if not code.strip():
        return 0.0  # nothing to run
    run = run_command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_candidate.py"],
                      timeout=TIMEOUT_S, limits=LIMITS, files={"test_candidate.py": code + "\n\n" + (tests or "") + "\n"},
                      env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})  # plain pytest: starts in a fraction of a second
    if run.status == "timeout":
        return -0.5
    if run.status != "exited":
        return -1.0  # killed by a limit or a signal, or could not start
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    if "error" in summary:
        return -1.0  # the candidate does not even import (syntax error, crash at import)
    if "failed" in summary:
        return 0.3
    if "passed" in summary:
        return 1.0
    return 0.0  # no test ran


def reward_func(queries, prompts, labels):
    rewards = []
    for query, prompt, tests in zip(queries, prompts, labels):
        response = query[len(prompt):] if query.startswith(prompt) else query.split(prompt)[-1]
        rewards.append(outcome_reward(response.strip(), tests))
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": (rewards + 1.0) / 2.0,
        "extra_logs": {"pass_rate": (rewards == 1.0).float().mean()},
    }
