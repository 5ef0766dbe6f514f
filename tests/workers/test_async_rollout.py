"""algorithm.async: the bounded queue of batches running ahead of the trainers, its staleness
bookkeeping, and a whole asynchronous job in the distributed placement."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e import QUICKSTART, metrics
from support.jobs import merge, runnable_spec, write_job

import torch

from rlhf_workers.algorithms import policy_loss
from rlhf_workers.async_rollout import (IS_WEIGHT_BOUNDS, OFF_POLICY_WARN_NATS, AsyncRollouts, check_off_policy,
                                        off_policy_correction)
from rlhf_workers.step_metrics import Timer
from rlhf_workers.weight_sync import SyncReport


class Prompts:
    def __init__(self, batches: int):
        self.left = batches

    @property
    def exhausted(self) -> bool:
        return self.left <= 0


class CountingSync:
    """The weight push as the queue sees it: records which batches were being generated during each push."""

    def __init__(self, generating: threading.Event):
        self.generating = generating
        self.overlaps = 0
        self.pushes = 0

    def push(self) -> SyncReport:
        self.overlaps += self.generating.is_set()
        self.pushes += 1
        return SyncReport("gloo", 1, 0.0)


def _session(batches: int):
    generating = threading.Event()
    session = SimpleNamespace(prompts=Prompts(batches), rollout_lock=threading.Lock(),
                              cluster=SimpleNamespace(weight_sync=CountingSync(generating)))

    def collect(s, t):
        generating.set()
        with t("generate"):
            time.sleep(0.02)
        s.prompts.left -= 1
        generating.clear()
        return SimpleNamespace(index=batches - s.prompts.left)

    return session, collect


def test_batches_run_at_most_max_staleness_ahead_and_never_overlap_a_push():
    session, collect = _session(batches=6)
    source = AsyncRollouts(session, collect, max_staleness=2)
    try:
        taken, staleness = [], []
        while source.more():
            t = Timer()
            taken.append(source.next(t).index)
            assert t.seconds["generate"] > 0  # the thread's timings reach the step's row
            time.sleep(0.05)  # "training": the thread fills the queue meanwhile
            source.push_weights()
            row = source.metrics()
            staleness.append(row["async/staleness_mean"])
            assert row["async/queue_depth"] <= 2 and row["async/dropped"] == 0
    finally:
        source.close()
    assert taken == [1, 2, 3, 4, 5, 6]
    assert max(staleness) <= 2 and max(staleness) >= 1  # it did run ahead, within the bound
    assert session.cluster.weight_sync.overlaps == 0  # no push while a batch was being sampled


def test_a_batch_older_than_max_staleness_is_dropped_and_counted():
    session, collect = _session(batches=2)
    source = AsyncRollouts(session, collect, max_staleness=1)
    try:
        assert source.more()
        source.push_weights()
        source.push_weights()  # the ready batch is now two versions old
        batch = source.next(Timer())
        assert batch.index == 2 and source.metrics()["async/dropped"] == 1
    finally:
        source.close()


def test_an_error_in_the_rollout_thread_reaches_the_loop():
    session, _ = _session(batches=3)

    def broken(s, t):
        raise ValueError("reward server down")

    source = AsyncRollouts(session, broken, max_staleness=1)
    try:
        assert source.more()
        with pytest.raises(ValueError, match="reward server down"):
            source.next(Timer())
    finally:
        source.close()


# --------------------------------------------------------------------------- stale batches: importance weights


def test_a_stale_batch_gets_truncated_importance_weights_and_its_mismatch_is_measured():
    trainer = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -4.0, -1.0, 0.0]])
    sampling = torch.tensor([[-1.0, -1.0, -3.0, -3.5], [-0.7, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    c = off_policy_correction(trainer, sampling, mask)
    low, high = IS_WEIGHT_BOUNDS
    expected = (trainer - sampling).exp().clamp(low, high) * mask
    assert torch.allclose(c.weights, expected)
    assert c.weights[1, 3] == 0  # padding
    # ratios exp(0)=1, exp(-1)=0.37 (cut to 0.5), exp(2.5)=12.2 (cut to 5), exp(0.5), exp(0.5), exp(-3) (cut), exp(0)
    assert c.metrics["async/is_weight_clipped"] == pytest.approx(3 / 7)
    diff = ((sampling - trainer) * mask).sum() / 7
    assert c.metrics["async/behaviour_kl"] == pytest.approx(float(diff))
    assert c.metrics["async/behaviour_logprob_diff"] == pytest.approx(float(((trainer - sampling).abs() * mask).sum() / 7))
    assert c.metrics["async/is_weight_mean"] == pytest.approx(float(expected.sum() / 7))


def test_same_policy_means_unit_weights_and_no_mismatch():
    logp = -torch.rand(3, 5) * 3
    c = off_policy_correction(logp, logp.clone(), torch.ones(3, 5))
    assert torch.equal(c.weights, torch.ones(3, 5))
    assert c.metrics["async/behaviour_kl"] == 0 and c.metrics["async/is_weight_clipped"] == 0


def test_a_stale_batch_far_from_the_trainers_policy_is_warned_about(caplog):
    assert not check_off_policy({"logprob_diff_mean": 0.2})
    assert not check_off_policy({})  # no sampled-token logprobs to compare
    with caplog.at_level("WARNING"):
        assert check_off_policy({"logprob_diff_mean": OFF_POLICY_WARN_NATS + 2})
    assert "weight push did not arrive" in caplog.text and f"{OFF_POLICY_WARN_NATS + 2:.2f} nats" in caplog.text


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_weighing_the_advantages_weighs_each_tokens_ppo_loss(dual_clip):
    """OpenRLHF multiplies each token's clipped PPO loss by the weight; scaling the advantage by a
    positive weight gives the same loss token by token (ratios inside and outside the clip)."""
    torch.manual_seed(0)
    logp, old = -torch.rand(4, 6) * 2, -torch.rand(4, 6) * 2
    advantages = torch.randn(4, 6)
    c = off_policy_correction(old, old - torch.randn(4, 6), torch.ones(4, 6))
    weighted = c.weigh(advantages)
    for i in range(4):
        for j in range(6):
            one = torch.zeros(4, 6)
            one[i, j] = 1.0
            plain, _ = policy_loss(logp, old, advantages, one, dual_clip=dual_clip)
            scaled, _ = policy_loss(logp, old, weighted, one, dual_clip=dual_clip)
            assert scaled == pytest.approx(float(c.weights[i, j] * plain), rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------- a whole job


@pytest.mark.slow
def test_async_job_in_the_distributed_placement_trains_one_version_behind(ray_cluster, tiny, tmp_path):
    """placement auto + async: the job runs distributed, every step trains a batch sampled at most
    maxStaleness versions earlier, the weights travel over gloo, nothing is dropped; stale
    batches (two epochs each here) are trained with importance weights."""
    from rlhf_workers.local import run_local

    job = write_job(tmp_path, merge(runnable_spec(tiny, QUICKSTART / "prompts.jsonl", QUICKSTART / "reward_func.py"), {
        "algorithm": {"async": {"enabled": True, "maxStaleness": 1}}, "rollout": {"backend": "vllm"},
        "cluster": {"placement": "auto"}, "training": {"maxSteps": 4, "learningRate": 1e-2, "maxEpochs": 2}}))
    assert run_local(str(job), str(tmp_path / "out"), quiet=True) == 0
    rows = metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {r["weight_sync/backend"] for r in rows} == {"gloo"}
    assert all(0 <= r["async/staleness_mean"] <= 1 and r["async/dropped"] == 0 for r in rows)
    assert any(r["async/staleness_mean"] == 1 for r in rows)  # generation did run ahead of training
    for key in ("async/queue_depth", "async/trainer_wait_s", "async/push_wait_s", "async/rollout_wait_s"):
        assert all(key in r for r in rows), key
    stale = [r for r in rows if r["async/staleness_mean"] == 1]
    for r in stale:  # trained with importance weights, the sampling policy's distance measured
        assert 0 < r["async/is_weight_mean"] <= 5 and 0 <= r["async/is_weight_clipped"] <= 1, r
        assert r["async/behaviour_logprob_diff"] >= abs(r["async/behaviour_kl"]), r
    assert any(r["async/behaviour_logprob_diff"] > 0 for r in stale)  # the policy moved between sampling and training


SEED = Path("/work/shared/seed/custom-reward-functions.md")


@pytest.mark.slow
@pytest.mark.skipif(not SEED.is_file(), reason=f"{SEED} not present")
def test_async_job_with_the_seed_math_agent(ray_cluster, tiny, tmp_path):
    """Agents run their multi-step episodes in the rollout thread (asyncio in that thread), one
    policy per batch: every step's episodes ran 3 turns and the queue bookkeeping is reported."""
    import json
    import re

    import yaml

    from rlhf_workers.local import run_local

    blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), flags=re.S)
    (tmp_path / "agent_func.py").write_text(
        next(b for b in blocks if b.strip().splitlines()[0].strip() == "# agent_func_math.py"))
    prompts = tmp_path / "math.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question: {a}+{b}?\nAnswer:", "target": str(a + b)}) + "\n"
                               for a in range(3) for b in range(3)))
    spec = merge(runnable_spec(tiny, prompts, QUICKSTART / "reward_func.py"), {
        "agent": {"path": str(tmp_path / "agent_func.py"), "maxSteps": 3},
        "algorithm": {"async": {"enabled": True}}, "rollout": {"backend": "vllm", "promptMaxLen": 256},
        "cluster": {"placement": "distributed"}, "training": {"maxSteps": 3}})
    del spec["reward"]
    job = write_job(tmp_path, spec)
    assert run_local(str(job), str(tmp_path / "out"), quiet=True) == 0, yaml.safe_dump(spec)
    rows = metrics(tmp_path / "out")
    assert len(rows) == 3
    for r in rows:
        assert r["extra/attempts"] == pytest.approx(3.0) and r["samples"] == 2 * r["filter/groups_generated"], r
        assert r["async/staleness_mean"] <= 1 and r["async/dropped"] == 0
    stale = [r for r in rows if r["async/staleness_mean"] == 1]
    assert stale and all(0 < r["async/is_weight_mean"] <= 5 for r in stale)  # agents' episodes get weights too
