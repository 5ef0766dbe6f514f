"""The sandbox the reward runs in: a pool that keeps order and survives hangs and deaths, and walls
that hold for a non-root user (the pod's case): stripped environment, rlimits inherited by children,
bounded output, no network, a read-only file system outside scratch.

Each containment test runs the pool as uid 1000 (``setpriv``) when the tests run as root, and skips
with the kernel's own answer where this machine cannot give a wall (the pool's report says why).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlhf_workers.sandbox import Limits, SandboxPool
from rlhf_workers.sandbox.limits import SERVICE_ACCOUNT_DIRS, sandbox_env
from rlhf_workers.sandbox.pool import default_read_paths

SLEEPY = '''
import os, time
def reward_func(queries, prompts, labels):
    out = []
    for q in queries:
        kind, _, arg = q.partition(":")
        if kind == "sleep":
            time.sleep(float(arg))
        elif kind == "die":
            os.kill(os.getpid(), 9)
        elif kind == "raise":
            raise RuntimeError("asked to raise")
        elif kind == "print":
            print("x" * int(arg), flush=True)
            raise RuntimeError("printed a lot")
        out.append(float(len(q)))
    return {"rewards": out}
'''


@pytest.fixture()
def shared_dir():
    """A directory uid 1000 can read (pytest's tmp_path belongs to root, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _reward(directory: Path, source: str, name: str = "reward_func.py") -> str:
    path = directory / name
    path.write_text(source)
    path.chmod(0o644)
    return str(path)


def test_the_pool_returns_results_in_call_order_whatever_finishes_first(shared_dir):
    calls = [([f"sleep:{d}"], [""], [""]) for d in (0.6, 0.0, 0.3, 0.0, 0.1, 0.0)]
    with SandboxPool({"kind": "reward_func", "path": _reward(shared_dir, SLEEPY)}, size=3, timeout=10) as pool:
        outcomes = pool.map(calls)
    assert [o.status for o in outcomes] == ["ok"] * 6
    assert [o.value["rewards"] for o in outcomes] == [[float(len(c[0][0]))] for c in calls]


def test_a_hung_call_ends_at_the_timeout_and_a_dead_worker_is_replaced(shared_dir):
    with SandboxPool({"kind": "reward_func", "path": _reward(shared_dir, SLEEPY)}, size=2, timeout=1.5) as pool:
        started = time.monotonic()
        outcomes = pool.map([(["sleep:3600"], [""], [""]), (["die"], [""], [""]), (["raise"], [""], [""]),
                             (["ok"], [""], [""]), (["ok2"], [""], [""])])
        elapsed = time.monotonic() - started
        assert [o.status for o in outcomes] == ["timeout", "raised", "raised", "ok", "ok"]
        assert "killed by SIGKILL" in outcomes[1].error["message"]
        assert outcomes[2].error["line"].endswith('raise RuntimeError("asked to raise")')
        assert elapsed < 10
        assert pool.replaced >= 1
        assert [o.status for o in pool.map([(["again"], [""], [""])] * 2)] == ["ok", "ok"]  # both workers serve


def test_a_worker_killed_while_idle_is_replaced_before_its_next_call(shared_dir):
    import signal

    with SandboxPool({"kind": "reward_func", "path": _reward(shared_dir, SLEEPY)}, size=1, timeout=10) as pool:
        worker = pool._workers[0]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        (outcome,) = pool.map([(["after"], [""], [""])])
        assert outcome.status == "ok" and outcome.value == {"rewards": [5.0]} and pool.replaced == 1


def test_output_is_kept_only_up_to_its_bound_and_never_written_to_disk(shared_dir):
    limits = Limits(output_kb=4)
    with SandboxPool({"kind": "reward_func", "path": _reward(shared_dir, SLEEPY)}, size=1, timeout=30,
                     limits=limits) as pool:
        (outcome,) = pool.map([(["print:10000000"], [""], [""])])  # 10 MB in one call
    assert outcome.status == "raised"
    assert len(outcome.output) < 8000 and "earlier bytes of output dropped" in outcome.output


def test_the_environment_is_an_allow_list_and_the_token_directories_are_never_readable():
    env = sandbox_env("/scratch", {"PATH": "/bin", "RLHF_SECRET": "s", "AWS_SECRET_ACCESS_KEY": "k", "HF_TOKEN": "t",
                                   "WANDB_API_KEY": "w", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "LC_ALL": "C"})
    assert not {"RLHF_SECRET", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "WANDB_API_KEY", "KUBERNETES_SERVICE_HOST"} & set(env)
    assert env["HOME"] == env["TMPDIR"] == "/scratch" and env["LC_ALL"] == "C"
    for path in default_read_paths(["/var/run/secrets/kubernetes.io/serviceaccount", "/data"]):
        assert not any(path == d or path.startswith(d + "/") for d in SERVICE_ACCOUNT_DIRS), path
    cached = sandbox_env("/scratch", {"HF_HOME": "/models/hf", "HF_TOKEN": "t"})
    assert cached["HF_HOME"] == "/models/hf" and "HF_TOKEN" not in cached  # the cache, not the credential


ENV_READER = '''
import os


def reward_func(queries, prompts, labels):
    return {"rewards": [float(os.environ.get(q, "-1")) for q in queries]}
'''


def test_the_jobs_plain_env_reaches_the_reward_and_its_secret_backed_env_does_not(shared_dir, monkeypatch):
    from rlhf_api.cluster import ClusterSpec

    cluster = ClusterSpec.model_validate({"env": [
        {"name": "PLAIN", "value": "7"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})
    assert cluster.plain_env() == {"PLAIN": "7"}
    monkeypatch.setenv("FROM_SECRET", "3")  # as the kubelet would set it in the worker's environment
    with SandboxPool({"kind": "reward_func", "path": _reward(shared_dir, ENV_READER)}, size=1, timeout=30,
                     env=cluster.plain_env()) as pool:
        (outcome,) = pool.map([(["PLAIN", "FROM_SECRET"], ["", ""], [None, None])])
    assert outcome.status == "ok" and outcome.value["rewards"] == [7.0, -1.0]


WRITER = '''
def reward_func(queries, prompts, labels):
    out = []
    for path in queries:
        try:
            with open(path, "w") as f:
                f.write("x")
            out.append(1.0)
        except OSError:
            out.append(0.0)
    return {"rewards": out}
'''


def test_write_paths_are_writable_and_the_rest_stays_read_only(shared_dir):
    from rlhf_workers.sandbox.landlock import abi_version

    if abi_version() < 1:
        pytest.skip("Landlock is not available in this kernel")
    allowed, other = shared_dir / "allowed", shared_dir / "other"
    allowed.mkdir()
    other.mkdir()
    with SandboxPool({"kind": "reward_func", "path": _reward(shared_dir, WRITER)}, size=1, timeout=30,
                     write_paths=[str(allowed)]) as pool:
        (outcome,) = pool.map([([str(allowed / "a"), str(other / "b")], ["", ""], [None, None])])
    assert outcome.status == "ok" and outcome.value["rewards"] == [1.0, 0.0]
    assert (allowed / "a").read_text() == "x" and not (other / "b").exists()


def test_test_reward_on_a_hanging_reward_fails_at_its_timeout_instead_of_waiting(shared_dir):
    path = _reward(shared_dir, "import time\ndef reward_func(queries, prompts, labels):\n    time.sleep(3600)\n")
    data = shared_dir / "samples.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "test-reward", path, "--data", str(data),
                           "--timeout", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "did not return within 2s on 1 samples and was killed" in done.stdout
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------- the walls, as a non-root user

PROBES = '''
import os, resource, socket, subprocess, sys

def probe(name, arg):
    """1.0 when the sandboxed code managed to do ``name``, 0.0 when it was stopped."""
    if name == "secret_env":
        return float(any(k.startswith(("RLHF_", "AWS_", "WANDB_")) or k.endswith("_TOKEN") for k in os.environ))
    if name == "connect_outside":
        try:
            socket.create_connection((arg, 53), timeout=3).close()
            return 1.0
        except OSError:
            return 0.0
    if name == "connect_loopback_tcp":  # a server the test runs on the host's loopback
        try:
            socket.create_connection(("127.0.0.1", int(arg)), timeout=3).close()
            return 1.0
        except OSError:
            return 0.0
    if name in ("write", "read"):
        try:
            if name == "write":
                with open(arg, "w") as f:
                    f.write("escaped")
            else:
                open(arg).read()
            return 1.0
        except OSError:
            return 0.0
    if name == "parent_environ":  # the worker's environment, which holds what the sandbox's is stripped of
        try:
            return float("RLHF_SECRET" in open(f"/proc/{os.getppid()}/environ").read())
        except OSError:
            return 0.0
    if name == "own_proc":
        return float(len(open("/proc/self/status").read()) > 0 and len(open("/proc/cpuinfo").read()) > 0)
    if name == "write_scratch":
        with open("in-scratch.txt", "w") as f:
            f.write("ok")
        return float(os.getcwd() == os.environ["HOME"] and os.path.exists(os.path.join(os.environ["HOME"], "in-scratch.txt")))
    if name == "allocate_mb":
        try:
            block = bytearray(int(arg) * 1024 * 1024)
            return float(len(block) > 0)
        except MemoryError:
            return 0.0
    if name == "child_memory_limit_mb":  # what a process the reward starts is allowed
        out = subprocess.run([sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"],
                             capture_output=True, text=True, check=True).stdout
        return float(int(out) // (1024 * 1024))
    if name == "spawn_processes":
        children = []
        try:
            for _ in range(int(arg)):
                children.append(subprocess.Popen(["sleep", "30"]))
        except OSError:
            pass
        for c in children:
            c.kill()
            c.wait()
        return float(len(children))
    if name == "big_file_mb":
        try:
            with open("big.bin", "wb") as f:
                f.write(b"x" * (int(arg) * 1024 * 1024))
            return 1.0
        except OSError:
            return 0.0
    raise ValueError(name)

def reward_func(queries, prompts, labels):
    return {"rewards": [probe(q, l) for q, l in zip(queries, labels)]}
'''

DRIVER = '''
import json, os, sys
sys.path[:0] = json.loads(sys.argv[3])
from rlhf_workers.sandbox import Limits, SandboxPool
os.environ.update({"RLHF_SECRET": "s", "AWS_SECRET_ACCESS_KEY": "k", "HF_TOKEN": "t", "WANDB_API_KEY": "w"})
probes = json.loads(sys.argv[2])
limits = Limits(memory_mb=1024, max_processes=int(os.environ["PROBE_NPROC"]), file_size_mb=8)
walls = {"network": os.environ.get("PROBE_NETWORK") == "1", "landlock": os.environ.get("PROBE_LANDLOCK", "1") == "1"}
with SandboxPool({"kind": "reward_func", "path": sys.argv[1]}, size=1, timeout=60, limits=limits, **walls) as pool:
    outcomes = pool.map([([name], [""], [arg]) for name, arg in probes])
    print(json.dumps({"uid": os.getuid(), "report": pool.report,
                      "results": [o.value["rewards"][0] if o.ok else o.status + ": " + str(o.error) for o in outcomes]}))
'''


def _user_processes(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            count += pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid
        except OSError:
            pass
    return count


def _run_as_non_root(directory: Path, probes: list[tuple[str, str]], **walls: str) -> dict:
    """Run the probes in a sandbox pool owned by a non-root user; what each managed, and the pool's report."""
    reward = _reward(directory, PROBES, "probes.py")
    driver = _reward(directory, DRIVER, "driver.py")
    import rlhf_api
    import rlhf_workers

    roots = [str(Path(m.__file__).parents[1]) for m in (rlhf_api, rlhf_workers)]
    uid, python = os.getuid(), sys.executable
    prefix = []
    if uid == 0:  # drop to uid 1000, with the system Python (the venv's interpreter lives under /root)
        if shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"):
            pytest.skip("tests run as root and setpriv or /usr/bin/python3 is missing: cannot drop to a non-root user")
        uid, python = 1000, "/usr/bin/python3"
        prefix = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
    env = {**os.environ, "PROBE_NPROC": str(_user_processes(uid) + 40), "RLHF_SECRET": "in the worker's environ",
           **{f"PROBE_{k.upper()}": v for k, v in walls.items()}}
    done = subprocess.run(prefix + [python, driver, reward, json.dumps(probes), json.dumps(roots)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=directory)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    return out


def test_secrets_rlimits_children_and_scratch_hold_for_a_non_root_user(shared_dir):
    out = _run_as_non_root(shared_dir, [("secret_env", ""), ("write_scratch", ""), ("allocate_mb", "1536"),
                                        ("allocate_mb", "64"), ("child_memory_limit_mb", ""),
                                        ("spawn_processes", "200"), ("big_file_mb", "16")])
    secret, scratch, big_alloc, small_alloc, child_mb, spawned, big_file = out["results"]
    assert secret == 0.0  # RLHF_*, AWS_*, WANDB_*, *_TOKEN stripped
    assert scratch == 1.0  # cwd = HOME = a writable private scratch directory
    assert (big_alloc, small_alloc) == (0.0, 1.0)  # RLIMIT_AS of 1 GiB
    assert child_mb == 1024.0  # what the reward starts inherits the limits
    assert spawned < 60  # RLIMIT_NPROC stops a fork bomb (the user's other processes count too)
    assert big_file == 0.0  # RLIMIT_FSIZE of 8 MiB


def test_no_network_for_a_non_root_user(shared_dir):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    threading.Thread(target=lambda: [server.accept() for _ in range(2)], daemon=True).start()
    try:
        out = _run_as_non_root(shared_dir, [("connect_loopback_tcp", str(server.getsockname()[1])),
                                            ("connect_outside", "8.8.8.8")])
    finally:
        server.close()
    network = out["report"]["network"]
    if not network.startswith("none") and "Landlock" not in network:
        pytest.skip(f"this kernel gives the sandbox no network wall: {network}")
    assert out["results"] == [0.0, 0.0], network  # the host's loopback service is out of reach too


def test_the_file_system_is_read_only_outside_scratch_for_a_non_root_user(shared_dir, request):
    outside = Path(tempfile.mkdtemp(prefix="sandbox-outside-", dir=shared_dir.parent))
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))
    outside.chmod(0o777)  # Unix permissions would let uid 1000 write here: only Landlock stops it
    secret = outside / "token"  # outside the reward file's directory, which the reward may read
    secret.write_text("not for the reward")
    secret.chmod(0o644)
    out = _run_as_non_root(shared_dir, [("write", str(outside / "escaped.txt")), ("read", str(secret)),
                                        ("read", "/etc/hostname"), ("own_proc", "")])
    fs = out["report"]["filesystem"]
    if not fs.startswith("read-only"):
        pytest.skip(f"Landlock does not hold on this kernel: {fs}")
    assert out["results"][:2] == [0.0, 0.0], fs  # no write outside scratch; files outside the read list unreadable
    assert not (outside / "escaped.txt").exists()
    assert out["results"][2] == 1.0  # system files stay readable
    assert out["results"][3] == 1.0  # its own /proc/<pid> and /proc/cpuinfo stay readable


def test_landlock_alone_keeps_the_workers_environment_in_proc_out_of_reach(shared_dir):
    """Where no user namespace can be made (a restricted pod), only Landlock stands between the reward
    and /proc/<worker pid>/environ, which holds the secrets stripped from the reward's environment."""
    control = _run_as_non_root(shared_dir, [("parent_environ", "")], network="1", landlock="0")
    assert control["results"] == [1.0]  # the probe does see a leak when nothing stops it
    out = _run_as_non_root(shared_dir, [("parent_environ", ""), ("own_proc", "")], network="1")
    fs = out["report"]["filesystem"]
    if not fs.startswith("read-only"):
        pytest.skip(f"Landlock does not hold on this kernel: {fs}")
    assert out["results"] == [0.0, 1.0], fs


# --------------------------------------------------------------------------- the reward executor on the pool

BATCH_AWARE = '''
def reward_func(queries, prompts, labels):
    if any(q == "bad" for q in queries):
        raise ValueError("bad sample")
    return {"rewards": [float(len(queries)) + i / 100 for i in range(len(queries))], "extra_logs": {"calls": 1.0}}
'''


def test_split_batches_come_back_in_order_and_only_the_raising_sample_is_a_fault(shared_dir):
    from rlhf_workers.reward import SandboxedFunctionReward

    reward = SandboxedFunctionReward(_reward(shared_dir, BATCH_AWARE), parallelism=2, timeout=30)
    try:
        result = reward.score(["a", "b", "c", "d", "bad", "f"], ["p1"] * 3 + ["p2"] * 3)
    finally:
        reward.close()
    # chunks [a b c] and [d bad f] (one prompt group each); the second raised, so its samples were scored one by one
    assert result.rewards.tolist() == pytest.approx([3.0, 3.01, 3.02, 1.0, 0.0, 1.0])
    assert [(f.sample_index, f.kind) for f in result.faults] == [(4, "raised")]
    assert "ValueError: bad sample" in result.faults[0].message


def test_a_chunk_that_timed_out_is_rescored_sample_by_sample_when_others_ended(shared_dir):
    from rlhf_workers.reward import SandboxedFunctionReward

    reward = SandboxedFunctionReward(_reward(shared_dir, SLEEPY), parallelism=2, timeout=2)
    try:
        result = reward.score(["a", "bb", "ccc", "dddd", "sleep:3600", "ffffff"], ["p1"] * 3 + ["p2"] * 3)
        assert result.rewards.tolist()[:4] + result.rewards.tolist()[5:] == [1.0, 2.0, 3.0, 4.0, 6.0]
        assert [(f.sample_index, f.kind) for f in result.faults] == [(4, "timeout")]
        everything_hangs = reward.score(["sleep:3600"] * 4, ["p"] * 4)  # no chunk ended: no second round
        assert [f.kind for f in everything_hangs.faults] == ["timeout"] * 4
    finally:
        reward.close()


def test_batch_whole_gives_the_reward_the_whole_batch_in_one_call(shared_dir):
    from rlhf_workers.reward import SandboxedFunctionReward

    reward = SandboxedFunctionReward(_reward(shared_dir, BATCH_AWARE), parallelism=4, batch="whole", timeout=30)
    try:
        result = reward.score(["a", "b", "c", "d", "e"], ["p"] * 5)
    finally:
        reward.close()
    assert result.rewards.tolist() == pytest.approx([5.0, 5.01, 5.02, 5.03, 5.04]) and not result.faults


def test_a_reward_failing_at_import_is_a_load_error_naming_the_file(shared_dir):
    from rlhf_workers.reward import RewardLoadError, SandboxedFunctionReward

    path = _reward(shared_dir, "import not_a_module\ndef reward_func(q, p, l):\n    return {'rewards': [0.0]}\n")
    with pytest.raises(RewardLoadError) as info:
        SandboxedFunctionReward(path, timeout=30)
    assert path in str(info.value) and "No module named 'not_a_module'" in str(info.value)


# --------------------------------------------------------------------------- the sandbox API for generated code

TESTS = "def test_add():\n    assert add(2, 3) == 5\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"
PROGRAMS = {  # response -> the seed's reward for it
    "def add(a, b):\n    return a + b": 1.0,  # all tests pass
    "def add(a, b):\n    return a * b + 0 if a else 0": 0.3,  # some fail
    "": 0.0,  # no code: nothing ran
    "import time\ntime.sleep(60)\ndef add(a, b):\n    return a + b": -0.5,  # timeout
    "def add(a, b) return a + b": -1.0,  # syntax error
    "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)": -1.0,  # a crash
}


def test_run_python_says_how_each_run_ended():
    from rlhf_workers.sandbox.run import run_python

    limits = Limits(cpu_seconds=2, memory_mb=512, max_processes=32, file_size_mb=1, output_kb=1)
    assert run_python("print('hi')", limits=limits).ok
    assert (r := run_python("import sys; sys.exit(3)", limits=limits)).status == "exited" and r.exit_code == 3
    assert run_python("import time; time.sleep(60)", timeout=1, limits=limits).status == "timeout"
    assert run_python("while True: pass", timeout=30, limits=limits).signal == "SIGXCPU"  # its own CPU limit
    assert "MemoryError" in run_python("x = bytearray(1 << 30)", limits=limits).stderr
    big = run_python("print('y' * 100000)", limits=limits)
    assert big.ok and len(big.stdout) == 1024 and big.truncated
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()  # a caller with threads: the limits come from the launcher, not preexec_fn
    try:
        assert "MemoryError" in run_python("x = bytearray(1 << 30)", limits=limits).stderr
        assert run_python("while True: pass", timeout=30, limits=limits).signal == "SIGXCPU"
    finally:
        stop.set()
        other.join()


def test_the_code_exec_example_keeps_the_seed_semantics_in_the_sandbox(shared_dir):
    from rlhf_workers.reward import SandboxedFunctionReward

    example = Path(__file__).resolve().parents[2] / "examples" / "code-exec" / "reward_func.py"
    path = _reward(shared_dir, example.read_text())
    prompt = "Write add(a, b).\n"
    reward = SandboxedFunctionReward(path, parallelism=2, timeout=60)
    try:
        result = reward.score([prompt + p for p in PROGRAMS], [prompt] * len(PROGRAMS), [TESTS] * len(PROGRAMS))
    finally:
        reward.close()
    assert not result.faults
    assert result.rewards.tolist() == pytest.approx(list(PROGRAMS.values()))


def test_the_batch_is_split_at_prompt_group_boundaries_into_balanced_chunks():
    from rlhf_workers.reward.sandboxed import chunk_bounds

    groups = [p for p in "abcdef" for _ in range(4)]  # 6 prompts × 4 samples, prompt-major
    bounds = chunk_bounds(groups, 2)
    assert bounds == [(0, 12), (12, 24)]
    for parts in (3, 4, 5):
        bounds = chunk_bounds(groups, parts)
        assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == 24
        assert all(a % 4 == 0 and b % 4 == 0 for a, b in bounds)  # never inside a group
        assert all(b1 == a2 for (_, b1), (a2, _) in zip(bounds, bounds[1:]))  # contiguous, in order
    assert chunk_bounds(["x"] * 6, 3) == [(0, 6)]  # one group: one chunk
    assert chunk_bounds(list("abc"), 8) == [(0, 1), (1, 2), (2, 3)]
