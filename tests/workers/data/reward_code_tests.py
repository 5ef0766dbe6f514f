"""Code reward (test fixture): run pytest on the generated code; pass -> 1, fail -> 0, broken -> -1."""

import os
import subprocess
import sys
import tempfile

import torch

TIMEOUT_S = 60


def _score(code: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "test_generated.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(code)
        env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp, env=env,
            )
        except subprocess.TimeoutExpired:
            return -0.5
    if proc.returncode == 0:
        return 1.0
    if proc.returncode == 1:  # tests ran, some failed
        return 0.0
    return -1.0  # collection error, syntax error, no tests


def reward_func(queries, prompts, labels):
    rewards = torch.tensor(
        [_score(q[len(p):] if q.startswith(p) else q) for q, p in zip(queries, prompts)], dtype=torch.float32
    )
    return {"rewards": rewards, "scores": (rewards + 1.0) / 2.0, "extra_logs": {"pass_rate": (rewards == 1.0).float()}}
