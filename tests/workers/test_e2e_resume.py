"""A run killed mid-training resumes from its last checkpoint, with the same data position.

The job runs as ``python -m rlhf_cli.cli run`` in its own session; it is SIGKILLed (with
its embedded Ray) after a checkpoint, then started again with the same output directory.
The reward function logs the prompts it sees, so the test compares the resumed run's
prompts with the order the data stream defines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from e2e import metrics
from support.jobs import merge, runnable_spec, write_job

pytestmark = pytest.mark.slow

LOGGING_REWARD = '''
import os
import time

import torch

def reward_func(queries, prompts, labels):
    with open(os.path.join(os.environ["PROMPT_LOG"], f"{os.getpid()}.log"), "a") as f:
        f.write(json.dumps(prompts) + "\\n")
    time.sleep(0.3)  # slow steps down so the test can kill the run between two checkpoints
    return {"rewards": torch.tensor([float(len(q)) for q in queries]) / 100}

import json
'''


def _ray_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
    return pids


def _complete_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    return sorted(int(d.name.split("_")[1]) for d in root.glob("step_*") if (d / "state.json").is_file()) if root.is_dir() else []


def test_killed_run_resumes_from_its_checkpoint_with_the_same_data_position(tmp_path):
    from rlhf_workers.tiny import make_tiny_model

    tiny = make_tiny_model(tmp_path / "model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"prompt {i:02d}", "target": "a"}) + "\n" for i in range(24)))
    reward = tmp_path / "reward.py"
    reward.write_text(LOGGING_REWARD)
    log_dir = tmp_path / "prompt-log"
    log_dir.mkdir()
    spec = merge(runnable_spec(tiny, prompts, reward), {
        "training": {"maxSteps": 12, "episodes": 2, "rolloutBatchSize": 4, "seed": 5},
        "checkpoint": {"saveSteps": 2, "maxKeep": 2},
        "cluster": {"env": [{"name": "PROMPT_LOG", "value": str(log_dir)}]},
        # One sandboxed reward process per run writes the log, outside its scratch directory.
        "reward": {"parallelism": 1, "sandbox": {"writePaths": [str(log_dir)]}},
        "preflight": False,  # the code check's own calls would log prompts too
    })
    job = write_job(tmp_path, spec, "resume")
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONPATH="")
    command = [sys.executable, "-m", "rlhf_cli.cli", "run", str(job), "--output", str(out), "--quiet"]
    try:
        first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            done = _complete_steps(out)
            if done and done[-1] >= 4 and len(metrics(out)) > done[-1]:
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        for pid in _ray_processes(ray_tmp):  # Ray daemons of the killed run that left its session
            os.kill(pid, signal.SIGKILL)
        resumed_from = _complete_steps(out)[-1]
        killed_at = len(metrics(out))
        assert resumed_from < killed_at < 12

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        for pid in _ray_processes(ray_tmp):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))  # the steps after the checkpoint were redone once

    # The prompts of every step, in the order the seeded stream hands them out.
    from rlhf_api.spec import DataSpec
    from rlhf_workers.data import PromptStream, load_prompts
    from rlhf_workers.tiny import make_tokenizer

    stream = PromptStream(load_prompts(DataSpec(prompts=str(prompts), input_key="prompt"), make_tokenizer(), 64), 2, 5)
    expected = [[p.text for p in stream.take(4) for _ in range(2)] for _ in range(12)]
    logs = sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
    assert len(logs) == 2  # one reward process per run
    before = [json.loads(line) for line in logs[0].read_text().splitlines()]
    after = [json.loads(line) for line in logs[1].read_text().splitlines()]
    assert before == expected[:len(before)] and len(before) >= killed_at
    assert after == expected[resumed_from:]  # continues at the checkpoint's data position
