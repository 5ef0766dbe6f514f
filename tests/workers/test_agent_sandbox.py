"""Agent code runs in sandboxed processes, as reward code does: the driver never imports the file,
each episode's calls are bounded, hostile episodes are faults of their own, the rest complete, and the
walls (stripped environment, no network, read-only file system, memory limit) hold for a non-root user.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlhf_workers.agent_sandbox import AgentSandbox
from rlhf_workers.sandbox import Limits, SandboxStartError
from rlhf_workers.tiny import make_tokenizer

FIELDS = {"max_tokens": 4, "temperature": 1.0, "top_p": 1.0, "top_k": -1}

BEHAVIOURS = '''
import os, time
from openrlhf.utils.agent import AgentExecutorBase, AgentInstanceBase


class AgentInstance(AgentInstanceBase):
    async def reset(self, states, **kwargs):
        self.kind = states["label"]
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        if self.kind == "raise":
            raise ValueError("the environment broke")
        if self.kind == "hang":
            time.sleep(3600)  # blocks: only its thread can be given up
        if self.kind == "die":
            os.kill(os.getpid(), 9)
        if self.kind == "garbage":
            return {"rewards": "high", "environment_feedback": "", "done": True}
        return {"rewards": 1.0, "environment_feedback": " ok", "done": self.kind == "ok"}


class AgentExecutor(AgentExecutorBase):
    def __init__(self, max_steps, max_length, llm_engine, hf_tokenizer, result_queue):
        super().__init__(AgentInstance, max_steps, max_length, llm_engine, hf_tokenizer, result_queue)

    async def execute(self, prompt, label, sampling_params):
        if label == "block":
            time.sleep(3600)  # blocks the whole process's event loop: only the driver can end it
        return await super().execute(prompt, label, sampling_params)
'''


async def _answer(ids, fields):
    await asyncio.sleep(0.01)
    return {"token_ids": [97, 98], "logprobs": [-1.0, -1.0], "text": "ab", "finish_reason": "stop"}


@pytest.fixture()
def shared_dir():
    """A directory uid 1000 can read (pytest's tmp_path belongs to root, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="agent-sandbox-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _file(directory: Path, source: str, name: str = "agent_func.py") -> str:
    path = directory / name
    path.write_text(source)
    path.chmod(0o644)
    return str(path)


def test_hostile_episodes_are_faults_of_their_own_and_every_other_episode_completes(shared_dir):
    path = _file(shared_dir, BEHAVIOURS)
    kinds = ["ok", "raise", "ok", "hang", "ok", "die", "twice", "garbage", "ok", "block", "ok", "ok"]
    sandbox = AgentSandbox(path, tokenizer=make_tokenizer(), max_steps=3, max_length=64, timeout=1.5, size=2, grace=1.0)
    sandbox.start()
    try:
        started = time.monotonic()
        outcomes = asyncio.run(sandbox.run_episodes([(f"p{i}", k, FIELDS) for i, k in enumerate(kinds)], _answer))
        elapsed = time.monotonic() - started
    finally:
        sandbox.close()
    by_kind = {k: o for k, o in zip(kinds, outcomes)}
    for kind, outcome in zip(kinds, outcomes):
        if kind in ("ok", "twice"):
            assert outcome.ok, (kind, outcome.error)
            assert outcome.value["steps"] == (1 if kind == "ok" else 3) and outcome.value["reward"] == outcome.value["steps"]
    assert by_kind["raise"].status == "raised" and "the environment broke" in by_kind["raise"].error["message"]
    assert by_kind["raise"].error["line"].startswith(path) and "raise ValueError" in by_kind["raise"].error["line"]
    assert by_kind["hang"].status == "timeout" and "1.5s" in by_kind["hang"].error["message"]
    assert by_kind["die"].status == "raised" and "SIGKILL" in by_kind["die"].error["message"]
    assert by_kind["garbage"].status == "invalid" and "not a number" in by_kind["garbage"].error["message"]
    assert by_kind["block"].status == "timeout" and "blocks the event loop" in by_kind["block"].error["message"]
    assert sandbox.replaced >= 2  # the crashed and the blocked processes (and the one holding a hung thread)
    assert elapsed < 60


def test_the_driver_never_imports_the_agent_file_and_a_load_error_names_its_line(shared_dir):
    import builtins

    ok = _file(shared_dir, "import builtins\nbuiltins.AGENT_FILE_RAN_HERE = True\n" + BEHAVIOURS)
    sandbox = AgentSandbox(ok, tokenizer=make_tokenizer(), timeout=5, size=1)
    report = sandbox.start()
    sandbox.close()
    assert report["agent"] == {"executor": "AgentExecutor", "instance": "AgentInstance"}
    assert not hasattr(builtins, "AGENT_FILE_RAN_HERE")
    broken = _file(shared_dir, "import json\n\nvalue = json.loads('{not json')\n", "broken.py")
    with pytest.raises(SandboxStartError) as info:
        AgentSandbox(broken, timeout=5, size=1).start()
    message = str(info.value)
    assert "broken.py failed while loading: JSONDecodeError" in message and "broken.py:3" in message


PROBES = '''
import os, socket
from openrlhf.utils.agent import AgentInstanceBase


def probe(name, arg):
    if name == "secret_env":
        return float(any(k in os.environ for k in ("RLHF_SECRET", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")))
    if name == "parent_environ":
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            return float(b"RLHF_SECRET" in f.read())
    if name == "write":
        with open(arg, "w") as f:
            f.write("escaped")
        return 1.0
    if name == "connect":
        with socket.create_connection(("127.0.0.1", int(arg)), timeout=2):
            return 1.0
    if name == "allocate_mb":
        block = bytearray(int(arg) * 1024 * 1024)
        return float(len(block) > 0)
    return -1.0


class AgentInstance(AgentInstanceBase):
    async def reset(self, states, **kwargs):
        self.name, _, self.arg = states["label"].partition("|")
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        try:
            value = probe(self.name, self.arg)
        except Exception:  # noqa: BLE001 - refused: that is the point
            value = 0.0
        return {"rewards": value, "environment_feedback": "", "done": True}
'''

DRIVER = '''
import asyncio, json, os, sys
sys.path[:0] = json.loads(sys.argv[3])
os.environ.update({"RLHF_SECRET": "s", "AWS_SECRET_ACCESS_KEY": "k", "HF_TOKEN": "t", "WANDB_API_KEY": "w"})
from rlhf_workers.agent_sandbox import AgentSandbox
from rlhf_workers.sandbox import Limits
from rlhf_workers.tiny import make_tokenizer

async def answer(ids, fields):
    return {"token_ids": [97], "logprobs": [-1.0], "text": "a", "finish_reason": "stop"}

probes = json.loads(sys.argv[2])
sandbox = AgentSandbox(sys.argv[1], tokenizer=make_tokenizer(), max_steps=1, max_length=64, timeout=30, size=1,
                       limits=Limits(memory_mb=4096, max_processes=int(os.environ["PROBE_NPROC"])))
sandbox.start()
fields = {"max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "top_k": -1}
outcomes = asyncio.run(sandbox.run_episodes([("p", f"{n}|{a}", fields) for n, a in probes], answer))
sandbox.close()
print(json.dumps({"uid": os.getuid(), "report": sandbox.report,
                  "results": [o.value["reward"] if o.ok else o.status for o in outcomes]}))
'''


def _user_processes(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            count += pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid
        except OSError:
            pass
    return count


def _run_as_non_root(directory: Path, probes: list[tuple[str, str]]) -> dict:
    """The probes as agent steps in a sandbox owned by a non-root user (the pod's case)."""
    agent, driver = _file(directory, PROBES), _file(directory, DRIVER, "driver.py")
    import rlhf_api
    import rlhf_workers
    import torch

    roots = [str(Path(m.__file__).parents[1]) for m in (rlhf_api, rlhf_workers, torch)]  # torch: site-packages
    uid, python, prefix = os.getuid(), sys.executable, []
    if uid == 0:  # drop to uid 1000 with the system Python (the venv's interpreter lives under /root)
        if shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"):
            pytest.skip("tests run as root and setpriv or /usr/bin/python3 is missing: cannot drop to a non-root user")
        uid, python = 1000, "/usr/bin/python3"
        prefix = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
        if subprocess.run(prefix + [python, "-c", f"import sys; sys.path[:0] = {roots!r}; import torch"],
                          capture_output=True).returncode != 0:
            pytest.skip("the system Python cannot load this venv's packages as uid 1000")
    env = {**os.environ, "PROBE_NPROC": str(_user_processes(uid) + 40)}
    done = subprocess.run(prefix + [python, driver, agent, json.dumps(probes), json.dumps(roots)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=directory)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    return out


def test_agent_steps_are_walled_in_for_a_non_root_user(shared_dir, request):
    import socket
    import threading

    outside = Path(tempfile.mkdtemp(prefix="agent-outside-", dir=shared_dir.parent))
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))
    outside.chmod(0o777)  # Unix permissions would let uid 1000 write here: only Landlock stops it
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    threading.Thread(target=lambda: [server.accept() for _ in range(2)], daemon=True).start()
    try:
        out = _run_as_non_root(shared_dir, [("secret_env", ""), ("parent_environ", ""),
                                            ("write", str(outside / "escaped.txt")),
                                            ("connect", str(server.getsockname()[1])),
                                            ("allocate_mb", "8192"), ("allocate_mb", "16")])
    finally:
        server.close()
    secret, parent_environ, write, connect, big, small = out["results"]
    report = out["report"]
    assert secret == 0.0  # RLHF_*, AWS_*, WANDB_*, *_TOKEN never reach agent code
    assert (big, small) == (0.0, 1.0)  # RLIMIT_AS
    if report["filesystem"].startswith("read-only"):
        assert write == 0.0 and not (outside / "escaped.txt").exists()
        assert parent_environ == 0.0  # the driver's /proc/<pid>/environ is out of reach
    if report["network"].startswith("none") or "Landlock" in report["network"]:
        assert connect == 0.0
    if not report["filesystem"].startswith("read-only") or "none" not in report["network"] and "Landlock" not in report["network"]:
        pytest.skip(f"some walls do not hold on this kernel: {report}")


HOSTILE_STEPS = '''
import os, time
from openrlhf.utils.agent import AgentInstanceBase


class AgentInstance(AgentInstanceBase):
    async def reset(self, states, **kwargs):
        self.label = states["label"]
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        if self.label == "hang":
            time.sleep(3600)
        if self.label == "raise":
            raise KeyError("no such cell " + states["action_text"])
        leaked = os.environ.get("WANDB_API_KEY", "none")
        return {"rewards": float(leaked != "none"), "environment_feedback": "key: " + leaked, "done": True}
'''


def test_test_reward_tries_an_agent_file_per_sample_and_names_every_fault(shared_dir):
    path = _file(shared_dir, HOSTILE_STEPS)
    data = shared_dir / "samples.jsonl"
    rows = [("ok", "a"), ("hang", "b"), ("raise", "c")]
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "response": r, "label": k}) + "\n"
                            for i, (k, r) in enumerate(rows)))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "test-reward", path, "--data", str(data),
                           "--label-key", "label", "--timeout", "2"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WANDB_API_KEY": "secret-value"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sample 0: rewards 0, done True, feedback 'key: none'" in done.stdout  # the secret never reached it
    assert "sample 1: step timeout: AgentTimeout: AgentInstance.step did not return within 2s" in done.stdout
    assert "sample 2: step raised: KeyError: 'no such cell c'" in done.stdout
    assert f"at {path}:15: raise KeyError" in done.stdout
    assert "FAIL: 2 of 3 samples faulted" in done.stdout and "secret-value" not in done.stdout
    assert time.monotonic() - started < 60


def test_the_code_check_judges_agent_rows_by_max_error_rate_and_quotes_the_line(shared_dir):
    from types import SimpleNamespace

    from rlhf_api.spec import SandboxSpec
    from rlhf_workers.code_check import check_agent

    path = _file(shared_dir, HOSTILE_STEPS)
    rows = [("p0", "ok"), ("p1", "raise"), ("p2", "ok"), ("p3", "ok")]
    tolerant = SimpleNamespace(max_error_rate=0.25, sandbox=SandboxSpec())
    verdict = check_agent(path, rows, 5.0, tolerant)
    assert verdict.ok and "faulted on 1 of 4 rows (25%, within agent.maxErrorRate 25%" in verdict.warning
    assert "agent_func.py, line 15: raise KeyError" in verdict.warning
    strict = SimpleNamespace(max_error_rate=0.2, sandbox=SandboxSpec())
    verdict = check_agent(path, rows, 5.0, strict)
    assert not verdict.ok and "25% > agent.maxErrorRate 20%" in verdict.message
    hang = check_agent(path, [("p", "hang")], 1.0, tolerant)
    assert not hang.ok and "every row" in hang.message and "did not return within 1 s on row 0" in hang.message
    broken = _file(shared_dir, "import not_a_module_anywhere\n", "broken_agent.py")
    verdict = check_agent(broken, rows, 5.0, tolerant)
    assert not verdict.ok and "ModuleNotFoundError" in verdict.message and "broken_agent.py, line 1" in verdict.message
