"""Nothing the reward starts outlives the sandbox's kill: not a ``setsid``'d process, not a daemon
that forked twice, not a chain of processes forking while the kill runs; and nothing a
``run_command`` program starts outlives its run. Run as uid 1000 (as the pod runs) when the tests
run as root; every process is recognised by a marker of its own in its command line or its name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ESCAPER = '''
import ctypes, os, subprocess, sys, time

from rlhf_workers.sandbox.run import run_command


def double_fork(marker):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)
    os.wait()


def walker(name):
    """A process that keeps forking a child and exiting, in a session of its own."""
    if os.fork() == 0:
        os.setsid()
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: its /proc/PID/comm
        for _ in range(60):  # still walking when the pool kills at 4 s (60 steps: a bounded number of zombies)
            try:
                if os.fork() != 0:
                    os._exit(0)
            except OSError:
                pass
            time.sleep(0.1)
        time.sleep(3600)


def reward_func(queries, prompts, labels):
    kind, _, marker = queries[0].partition(":")
    if kind == "hang":  # three ways out of the process group, then a hang until the pool's timeout
        subprocess.Popen(["setsid", "sleep", marker + "1"])
        double_fork(marker + "2")
        walker("w" + marker[-10:])
        time.sleep(3600)
    ended = run_command(["sh", "-c", f"setsid sleep {marker}3 & sleep 0.2"], timeout=10)  # exits, leaves one
    timed_out = run_command(["sh", "-c", f"setsid sleep {marker}4 & sleep 60"], timeout=1)
    return {"rewards": [float(ended.ok), float(timed_out.status == "timeout")]}
'''

DRIVER = '''
import json, os, sys, time
sys.path[:0] = json.loads(sys.argv[2])
from rlhf_workers.sandbox import Limits, SandboxPool


def alive(marker):
    """pids of live processes whose command line or name holds the marker (zombies are dead)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
        if state != "Z" and (marker in cmdline or marker[-10:] in comm):
            found.append(pid)
    return found


marker = os.environ["ESCAPE_MARKER"]  # not in argv: the driver's own command line would match
limits = Limits(memory_mb=1024, max_processes=int(os.environ["PROBE_NPROC"]))
target = {"kind": "reward_func", "path": sys.argv[1]}
with SandboxPool(target, size=1, timeout=60, limits=limits) as pool:  # the runs end well before this
    (ran,) = pool.map([([f"run:{marker}"], [""], [""])])
    after_runs = alive(marker)  # the worker still lives: only run_command can have ended them
with SandboxPool(target, size=1, timeout=4, limits=limits) as pool:
    (hung,) = pool.map([([f"hang:{marker}"], [""], [""])])
    after_kill = alive(marker)
    print(json.dumps({"uid": os.getuid(), "report": pool.report, "ran": ran.status,
                      "ran_value": ran.value, "ran_error": ran.error, "hung": hung.status,
                      "after_runs": after_runs, "after_kill": after_kill}))
'''


def _user_processes(uid: int) -> int:
    return sum(1 for pid in os.listdir("/proc") if pid.isdigit() and _owned(pid, uid))


def _owned(pid: str, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False


@pytest.fixture()
def shared_dir():
    """A directory uid 1000 can read (pytest's tmp_path belongs to root, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-escape-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_nothing_the_reward_or_its_runs_start_outlives_the_kill_for_a_non_root_user(shared_dir):
    import rlhf_api
    import rlhf_workers

    for name, text in (("escaper.py", ESCAPER), ("driver.py", DRIVER)):
        (shared_dir / name).write_text(text)
        (shared_dir / name).chmod(0o644)
    roots = [str(Path(m.__file__).parents[1]) for m in (rlhf_api, rlhf_workers)]
    uid, python, prefix = os.getuid(), sys.executable, []
    if uid == 0:  # drop to uid 1000, with the system Python (the venv's interpreter lives under /root)
        if shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"):
            pytest.skip("tests run as root and setpriv or /usr/bin/python3 is missing: cannot drop to a non-root user")
        uid, python = 1000, "/usr/bin/python3"
        prefix = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
    marker = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**8:08d}"  # a sleep length no one else uses
    env = {**os.environ, "PROBE_NPROC": str(_user_processes(uid) + 60), "ESCAPE_MARKER": marker}
    try:
        done = subprocess.run(prefix + [python, str(shared_dir / "driver.py"), str(shared_dir / "escaper.py"),
                                        json.dumps(roots)], capture_output=True, text=True, timeout=120, env=env,
                              cwd=shared_dir)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["uid"] != 0
        assert "subreaper" in out["report"]["processes"], out["report"]
        assert out["ran"] == "ok" and out["ran_value"]["rewards"] == [1.0, 1.0], out
        assert out["after_runs"] == [], "a process a run_command program started with setsid outlived its run"
        assert out["hung"] == "timeout"
        assert out["after_kill"] == [], "a process the reward started outlived the pool's kill at the timeout"
    finally:  # whatever the outcome, leave nothing behind on the machine
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(pid), 9)
            except OSError:
                pass


def test_run_command_ends_what_its_program_left_behind_in_a_session_of_its_own():
    from rlhf_workers.sandbox.run import run_command

    marker = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**8:08d}"
    script = f"setsid sleep {marker} & (setsid sh -c 'sleep {marker}1 & sleep {marker}2' &) ; sleep 0.2"
    run = run_command(["sh", "-c", script], timeout=10)
    timed_out = run_command(["sh", "-c", f"setsid sleep {marker}3 & exec sleep 60"], timeout=0.5)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                left.append(pid)
                os.kill(int(pid), 9)
        except OSError:
            pass
    assert run.ok and timed_out.status == "timeout"
    assert left == []
