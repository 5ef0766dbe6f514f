"""Failure paths of the worker runtime that need no Ray: checkpoints that are corrupt or half
written, rewards that try to end the process, orphaned processes of a killed local run.

``rlhf test-reward`` runs as a real subprocess, so a reward that calls ``os._exit(0)`` would
end it with code 0 if the check did not stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_workers.checkpoint import MANIFEST_FILE, STATE_FILE, Checkpoints, CheckpointError, verify, write_manifest

# --------------------------------------------------------------------------- checkpoints


def _save(ckpts: Checkpoints, step: int, payload: bytes = b"x" * 4096) -> Path:
    """What a save does: the workers write aside, then the driver commits."""
    staging = ckpts.prepare(step)
    (staging / "policy" / f"step_{step:06d}").mkdir(parents=True)
    (staging / "policy" / f"step_{step:06d}" / "optim_states.pt").write_bytes(payload)
    ckpts.commit(step, {"data": {"episode": 0, "offset": step}})
    return ckpts.path_for(step)


def test_a_commit_is_invisible_until_verified_and_leaves_no_staging(tmp_path):
    ckpts = Checkpoints(tmp_path, max_keep=3)
    staging = ckpts.prepare(2)
    (staging / "model.pt").write_bytes(b"m" * 100)
    assert ckpts.latest() is None and not ckpts.path_for(2).exists()  # written aside: nothing to resume yet
    ckpts.commit(2, {"data": {"episode": 0, "offset": 2}})
    assert not staging.exists() and ckpts.latest().step == 2
    manifest = json.loads((ckpts.path_for(2) / MANIFEST_FILE).read_text())
    assert manifest["files"]["model.pt"]["size"] == 100 and STATE_FILE in manifest["files"]


def test_a_save_killed_half_way_is_never_resumed_and_is_removed_by_the_next_commit(tmp_path):
    ckpts = Checkpoints(tmp_path, max_keep=3)
    _save(ckpts, 2)
    killed = ckpts.prepare(4)
    (killed / "optim_states.pt").write_bytes(b"half")
    assert ckpts.latest().step == 2
    _save(ckpts, 6)
    assert not killed.exists() and [c.step for c in ckpts.complete()] == [2, 6]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no-step", "bad-json", "no-manifest-no-state"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_with_a_warning_naming_it(tmp_path, caplog, damage):
    ckpts = Checkpoints(tmp_path, max_keep=3)
    _save(ckpts, 2)
    latest = _save(ckpts, 4)
    optim = latest / "policy" / "step_000004" / "optim_states.pt"
    if damage == "truncate":
        optim.write_bytes(optim.read_bytes()[:100])
        named = optim
    elif damage == "flip":
        data = bytearray(optim.read_bytes())
        data[10] ^= 0xFF
        optim.write_bytes(bytes(data))
        named = optim
    elif damage == "delete":
        optim.unlink()
        named = optim
    elif damage == "no-step":
        (latest / STATE_FILE).write_text(json.dumps({"data": {"episode": 0, "offset": 4}}))
        write_manifest(latest)  # the files match their manifest: the state itself is what is wrong
        named = latest / STATE_FILE
    elif damage == "bad-json":
        (latest / STATE_FILE).write_text("{")
        named = latest / STATE_FILE
    else:
        (latest / MANIFEST_FILE).unlink()
        (latest / STATE_FILE).unlink()
        (latest / STATE_FILE).mkdir()  # a directory where the state should be
        named = latest
    with pytest.raises(CheckpointError, match=str(named)):
        verify(latest)
    caplog.set_level("WARNING")
    resumed = ckpts.latest()
    assert resumed is not None and resumed.step == 2
    assert str(latest) in caplog.text and str(named) in caplog.text
    assert not latest.exists() and (tmp_path / ".corrupt-step_000004").is_dir()  # set aside, not tried again
    caplog.clear()
    assert ckpts.latest().step == 2 and "not usable" not in caplog.text


def test_a_checkpoint_of_an_older_version_without_manifest_is_still_resumed(tmp_path, caplog):
    ckpts = Checkpoints(tmp_path, max_keep=3)
    (_save(ckpts, 2) / MANIFEST_FILE).unlink()
    caplog.set_level("WARNING")
    assert ckpts.latest().step == 2 and "not verified" in caplog.text


def test_a_step_saved_again_replaces_the_old_save(tmp_path):
    ckpts = Checkpoints(tmp_path, max_keep=3)
    _save(ckpts, 2, b"old")
    _save(ckpts, 2, b"new!")
    assert (ckpts.path_for(2) / "policy" / "step_000002" / "optim_states.pt").read_bytes() == b"new!"
    assert verify(ckpts.path_for(2)).step == 2


# --------------------------------------------------------------------------- rlhf test-reward


ENDINGS = {
    "os._exit(0)": "import os; os._exit(0)",
    "sys.exit()": "import sys; sys.exit()",
    "sys.exit(0)": "import sys; sys.exit(0)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
}


@pytest.mark.parametrize("where", ["call", "import"])
@pytest.mark.parametrize("name", sorted(ENDINGS))
def test_test_reward_reports_a_reward_that_ends_the_process_as_a_failure(tmp_path, name, where):
    body = ENDINGS[name]
    if where == "call":
        source = f"import torch\ndef reward_func(queries, prompts, labels):\n    {body}\n" \
                 "    return {'rewards': torch.zeros(len(queries))}\n"
    else:
        source = f"{body}\ndef reward_func(queries, prompts, labels):\n    return {{'rewards': [0.0] * len(queries)}}\n"
    (tmp_path / "reward.py").write_text(source)
    (tmp_path / "samples.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "test-reward", str(tmp_path / "reward.py"),
                           "--data", str(tmp_path / "samples.jsonl")], capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "FAIL" in out and ("KeyboardInterrupt" if name == "KeyboardInterrupt" else name.split("(")[0]) in out


# --------------------------------------------------------------------------- orphans of a killed local run


def test_cleanup_kills_the_processes_of_a_killed_run_and_spares_a_live_one(tmp_path):
    from rlhf_workers.local import RUN_MARKER, _run_id, cleanup_orphans

    # A stand-in for `rlhf run`: it starts a "Ray daemon" that inherits its marker, then is killed.
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    marker = _run_id(owner.pid)
    env = dict(os.environ, **{RUN_MARKER: marker})
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)
    live_owner_marker = _run_id(os.getpid())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env=dict(os.environ, **{RUN_MARKER: live_owner_marker}), start_new_session=True)
    try:
        time.sleep(0.3)
        assert cleanup_orphans() == 0  # the owner lives: nothing is an orphan
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        done = subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "run", "--cleanup"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "1 Ray process(es) of killed runs stopped" in done.stderr, done.stderr
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert live.poll() is None  # a process of a run still going is never touched
    finally:
        for p in (owner, orphan, live):
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- the head pod's preStop hook


def test_stop_driver_sigterms_the_driver_of_its_config_and_waits_for_it(tmp_path):
    """``python -m rlhf_workers --stop-driver`` (a preStop hook) signals only the driver of the same config."""
    done_file = tmp_path / "checkpointed"
    fake = ("import signal, sys, time\n"
            "def stop(*_):\n"
            "    time.sleep(1.5)  # the step and the checkpoint\n"
            f"    open({str(done_file)!r}, 'w').close()\n"
            "    sys.exit(143)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "time.sleep(120)\n")
    config, other = str(tmp_path / "worker.json"), str(tmp_path / "other.json")
    driver = subprocess.Popen([sys.executable, "-c", fake, "-m", "rlhf_workers", "--config", config])
    bystander = subprocess.Popen([sys.executable, "-c", fake, "-m", "rlhf_workers", "--config", other])
    try:
        time.sleep(1.0)
        started = time.monotonic()
        stop = subprocess.run([sys.executable, "-m", "rlhf_workers", "--stop-driver", "--config", config],
                              capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert done_file.exists() and time.monotonic() - started >= 1.5  # it waited for the checkpoint
        assert driver.wait(timeout=5) == 143 and bystander.poll() is None
    finally:
        for p in (driver, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()
