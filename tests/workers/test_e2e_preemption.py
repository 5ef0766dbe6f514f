"""Runs ended by real signals resume as if nothing happened.

Each run is ``python -m rlhf_cli.cli run`` on an embedded Ray (transformers rollouts, one
DeepSpeed trainer, CPU). An uninterrupted run of the job is the reference; then:

* ``kill -9`` of ``rlhf run`` alone (its Ray daemons are orphaned, as after an OOM kill) after a
  checkpoint: the next run stops the orphans as it starts, resumes, and its metrics for every
  step after the checkpoint equal the reference's;
* SIGTERM (a preempted pod): the run finishes its step, checkpoints it, exits 143; the resumed run
  redoes no completed step and ends with the reference's metrics;
* SIGINT to the whole process group (Ctrl-C in a terminal): exit 130, no process left.
"""

from __future__ import annotations

import json
import math
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

STEPS = 6
REWARD = '''
import time

import torch

def reward_func(queries, prompts, labels):
    time.sleep(0.4)  # slow steps down so a signal lands mid-run
    return {"rewards": torch.tensor([float(len(q) % 7) for q in queries]) / 7}
'''
VOLATILE = ("time/", "samples_per_second", "tokens_per_second")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from rlhf_workers.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("preempt")
    tiny = make_tiny_model(d / "model")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"prompt {i:02d}", "target": "a"}) + "\n"
                                             for i in range(24)))
    (d / "reward.py").write_text(REWARD)
    spec = merge(runnable_spec(tiny, d / "prompts.jsonl", d / "reward.py"), {
        "rollout": {"temperature": 1.0, "maxNewTokens": 12},
        "training": {"maxSteps": STEPS, "rolloutBatchSize": 4, "seed": 11, "learningRate": 5e-3},
        "checkpoint": {"saveSteps": 2, "maxKeep": 2},
    })
    return write_job(d, spec, "preempt")


@pytest.fixture()
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    yield path
    for pid in _processes_with(path.encode()):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def _processes_with(needle: bytes, where: str = "cmdline") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / where).read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _command(job: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "rlhf_cli.cli", "run", str(job), "--output", str(out), "--quiet"]


def _env(ray_tmp: str) -> dict:
    return dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONPATH="")


def _run(job: Path, out: Path, ray_tmp: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(job, out), env=_env(ray_tmp), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _start(job: Path, out: Path, ray_tmp: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(_command(job, out), env=_env(ray_tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **kwargs)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert ready(), "timed out"


def _saved(out: Path) -> list[int]:
    root = out / "checkpoints"
    return sorted(int(d.name.split("_")[1]) for d in root.glob("step_*")) if root.is_dir() else []


def _assert_same_metrics(rows: list[dict], reference: list[dict], steps: range) -> int:
    by_step = {r["step"]: r for r in rows}
    compared = 0
    for step in steps:
        got, want = by_step[step], reference[step - 1]
        keys = {k for k in want if not k.startswith(VOLATILE) and k not in VOLATILE}
        assert keys <= set(got), f"step {step}: missing {keys - set(got)}"
        for k in sorted(keys):
            a, b = got[k], want[k]
            if isinstance(b, float) and isinstance(a, (int, float)):
                assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7), f"step {step} {k}: {a} != {b}"
            else:
                assert a == b, f"step {step} {k}: {a!r} != {b!r}"
            compared += 1
    return compared


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    path = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    try:
        out = tmp_path_factory.mktemp("reference")
        _run(job, out, path)
    finally:
        for pid in _processes_with(path.encode()):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert len({round(r["reward/mean"], 9) for r in rows}) > 1  # the policy and its samples do change
    shutil.copytree(out, REFERENCE_COPY.setdefault("out", Path(tempfile.mkdtemp(prefix="rp-ref-")) / "out"))
    return rows


REFERENCE_COPY: dict = {}


def test_a_sigkilled_run_resumes_with_the_uninterrupted_runs_metrics_and_no_orphans(job, reference, ray_tmp,
                                                                                      tmp_path):
    from rlhf_workers.local import RUN_MARKER, _run_id

    out = tmp_path / "out"
    first = _start(job, out, ray_tmp)
    marker = f"{RUN_MARKER}={_run_id(first.pid)}".encode()
    _wait_for(first, lambda: _saved(out) and len(metrics(out)) > _saved(out)[-1])
    os.kill(first.pid, signal.SIGKILL)  # rlhf run alone: its Ray daemons live on, orphaned
    first.wait()
    resumed_from, killed_at = _saved(out)[-1], len(metrics(out))
    assert 0 < resumed_from < killed_at < STEPS
    assert _processes_with(marker, "environ"), "the killed run left no Ray process: the test proves nothing"

    second = _run(job, out, ray_tmp)
    assert "left behind by a killed run" in second.stderr
    assert _processes_with(marker, "environ") == []
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    compared = _assert_same_metrics(rows, reference, range(resumed_from + 1, STEPS + 1))
    assert compared > 20 * (STEPS - resumed_from)
    print(f"SIGKILL after step {killed_at}, resumed from {resumed_from}: {compared} values equal to 1e-6")


def test_sigterm_checkpoints_the_finished_step_and_exits_then_resumes_without_losing_it(job, reference, ray_tmp,
                                                                                        tmp_path):
    out = tmp_path / "out"
    first = _start(job, out, ray_tmp, start_new_session=True)
    _wait_for(first, lambda: len(metrics(out)) >= 3)
    first.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    output = first.communicate(timeout=60)[0].decode()
    exit_s = time.monotonic() - signalled
    assert first.returncode == 128 + signal.SIGTERM, output[-3000:]
    done = len(metrics(out))
    assert _saved(out)[-1] == done, (output[-2000:], _saved(out))  # the last completed step is in a checkpoint
    assert "stopped by SIGTERM" in output and exit_s < 30, (exit_s, output[-2000:])
    assert _processes_with(ray_tmp.encode()) == [] or _wait_gone(ray_tmp)

    second = _run(job, out, ray_tmp)
    assert "stopped by" not in second.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no step lost, none redone
    _assert_same_metrics(rows, reference, range(done + 1, STEPS + 1))
    print(f"SIGTERM after step {done}: exit 143 in {exit_s:.1f}s")


def _wait_gone(marker: str, timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _processes_with(marker.encode()):
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_stops_the_run_and_its_ray_processes(job, ray_tmp, tmp_path):
    out = tmp_path / "out"
    first = _start(job, out, ray_tmp, start_new_session=True)
    _wait_for(first, lambda: len(metrics(out)) >= 1)
    os.killpg(first.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    output = first.communicate(timeout=60)[0].decode()
    assert first.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "interrupted" in output, output[-3000:]
    assert _wait_gone(ray_tmp), _processes_with(ray_tmp.encode())


def test_a_truncated_optimizer_file_in_the_latest_checkpoint_falls_back_to_the_previous_one(job, reference, ray_tmp):
    out = REFERENCE_COPY["out"]  # the finished reference run: checkpoints of steps 4 and 6
    assert _saved(out) == [4, 6]
    # ZeRO-0 keeps the optimizer's state in the model states file: the biggest file of the save
    optim = max((out / "checkpoints" / "step_000006").rglob("*.pt"), key=lambda p: p.stat().st_size)
    optim.write_bytes(optim.read_bytes()[:1000])
    done = _run(job, out, ray_tmp)
    assert f"checkpoint {out / 'checkpoints' / 'step_000006'} is not usable" in done.stderr, done.stderr[-3000:]
    assert str(optim) in done.stderr and "falling back" in done.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    _assert_same_metrics(rows, reference, range(5, STEPS + 1))  # steps 5 and 6 redone from step 4, identically
    assert _saved(out) == [4, 6] and (out / "checkpoints" / ".corrupt-step_000006").is_dir()
    shutil.rmtree(out.parent, ignore_errors=True)
