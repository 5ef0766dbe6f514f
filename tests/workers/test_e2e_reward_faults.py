"""Reward faults end to end: real Ray, the tiny model, the reward in sandboxed processes.

A reward that raises on some samples, one that hangs, and one that fails on everything: the run
completes with the faults counted (``reward/errors/*`` in ``metrics.jsonl``), ends past a hang at
``reward.timeoutSeconds``, or stops at once with a message that quotes the first errors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from e2e import metrics
from rlhf_api.spec import RLHFJobSpec
from support.jobs import merge, runnable_spec, write_job

pytestmark = pytest.mark.slow

PROMPTS = [{"prompt": f"p{i}", "target": "a"} for i in range(4)]  # a step: 4 groups x 2 samples; 2 episodes


def _job(tmp_path: Path, tiny: Path, reward_body: str, reward: dict) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    code = tmp_path / "reward_func.py"
    code.write_text("import time\n\n"
                    "def reward_func(queries, prompts, labels):\n"
                    "    out = []\n"
                    "    for q, p in zip(queries, prompts):\n"
                    f"        {reward_body}\n"
                    "        out.append(float(q.count('a')) / max(1, len(q) - len(p)))\n"
                    "    return {'rewards': out}\n")
    spec = merge(runnable_spec(tiny, prompts, code), {"reward": reward, "training": {"episodes": 2}})
    if "preflight" in RLHFJobSpec.model_fields:  # these faults are meant for training, past the preflight check
        spec["preflight"] = False
    return write_job(tmp_path, spec)


def _run(job_path: Path, out: Path) -> int:
    from rlhf_workers.local import run_local

    return run_local(str(job_path), str(out), quiet=True)


def test_a_reward_raising_on_some_samples_completes_with_the_faults_counted_and_their_groups_skipped(
        ray_cluster, tiny, tmp_path):
    job = _job(tmp_path, tiny, "if p == 'p1':\n            raise KeyError('no answer for ' + p)",
               {"maxErrorRate": 0.5, "parallelism": 2})
    assert _run(job, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2
    for row in rows:  # p1's two samples raise; group_norm drops the whole group
        assert (row["reward/errors/raised"], row["reward/errors/timeout"], row["reward/errors/invalid"]) == (2, 0, 0)
        assert row["reward/error_rate"] == 0.25
        assert row["samples"] == 6 and row["filter/pass_rate"] == 0.75


def test_fallback_gives_faulted_samples_the_fallback_reward_and_trains_on_them(ray_cluster, tiny, tmp_path):
    job = _job(tmp_path, tiny, "if p == 'p1':\n            raise KeyError(p)",
               {"maxErrorRate": 0.5, "onError": "fallback", "fallbackReward": -3.0})
    assert _run(job, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert all(r["samples"] == 8 and r["reward/min"] == -3.0 and r["reward/errors/raised"] == 2 for r in rows)


def test_a_hanging_reward_is_cut_at_the_timeout_counted_and_the_run_ends(ray_cluster, tiny, tmp_path):
    job = _job(tmp_path, tiny, "if p == 'p2':\n            time.sleep(3600)",
               {"maxErrorRate": 0.5, "timeoutSeconds": 2, "parallelism": 4})
    started = time.monotonic()
    assert _run(job, tmp_path / "out") == 0
    assert time.monotonic() - started < 300
    rows = metrics(tmp_path / "out")
    assert [r["reward/errors/timeout"] for r in rows] == [2, 2]  # each call holds one group: p2's times out
    assert all(r["reward/errors/raised"] == 0 and r["samples"] == 6 for r in rows)
    assert all(r["time/reward"] >= 2.0 for r in rows)


def test_faults_past_max_error_rate_fail_fast_quoting_the_first_errors(ray_cluster, tiny, tmp_path, capsys):
    from rlhf_workers.local import QuietReporter, prepare_local_config
    from rlhf_workers.metrics import ProgressServer
    from rlhf_workers.reward import RewardFaultsExceeded
    from rlhf_workers.train import train

    job = _job(tmp_path, tiny, "if p != 'p0':\n            raise ValueError('cannot parse ' + p)", {})
    config = prepare_local_config(str(job), str(tmp_path / "out"))
    server = ProgressServer(0, host="127.0.0.1")
    try:
        with pytest.raises(RewardFaultsExceeded) as info:
            train(config, reporter=QuietReporter(), progress=server, threads=2)
        report = server.snapshot()
    finally:
        server.close()
    message = str(info.value)
    assert "6 of 8 samples of the last 1 step(s) had no reward (75% > maxErrorRate 20%)" in message
    assert "step 1, sample 2 (prompt 'p1'): raised: ValueError: cannot parse p1" in message
    assert "reward_func.py:7: raise ValueError('cannot parse ' + p)" in message  # the line in the user's file
    assert report.state == "failed" and report.failure_reason == "RewardFaults"
    assert report.reward_errors.raised == 6 and report.reward_error_rate == 0.75
    assert metrics(tmp_path / "out") == []  # nothing trained on the faulted step
    # the same job through `rlhf run`: exit 1 and the message
    assert _run(job, tmp_path / "out2") == 1
    assert "cannot parse p1" in capsys.readouterr().err


AGENT = '''
import time
from openrlhf.utils.agent import AgentInstanceBase


class AgentInstance(AgentInstanceBase):
    async def reset(self, states, **kwargs):
        self.prompt = states["observation"]
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        if self.prompt == "p1":
            raise RuntimeError("the environment broke on " + self.prompt)
        if self.prompt == "p2":
            time.sleep(3600)  # blocks its event loop: only a thread of its own can be given up
        if self.prompt == "p3":
            return {"rewards": "high", "environment_feedback": "", "done": True}
        return {"rewards": 1.0, "environment_feedback": "", "done": True}
'''


def test_agent_faults_raise_hang_and_contract_are_counted_and_the_run_ends(ray_cluster, tiny, tmp_path):
    import yaml

    (tmp_path / "agent_func.py").write_text(AGENT)
    job = _job(tmp_path, tiny, "pass", {})
    doc = yaml.safe_load(job.read_text())
    del doc["spec"]["reward"]
    doc["spec"]["agent"] = {"path": str(tmp_path / "agent_func.py"), "maxSteps": 2, "timeoutSeconds": 2,
                            "maxErrorRate": 0.8, "onError": "fallback", "fallbackReward": -1.0}
    job.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    assert _run(job, tmp_path / "out") == 0
    assert time.monotonic() - started < 300
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2
    for row in rows:  # p1 raises, p2 hangs, p3 returns a non-number: two episodes each
        assert (row["reward/errors/raised"], row["reward/errors/timeout"], row["reward/errors/invalid"]) == (2, 2, 2)
        assert row["reward/error_rate"] == 0.75
        assert row["samples"] == 8 and row["reward/min"] == -1.0 and row["reward/max"] == 1.0  # fallback: kept
