"""Fast tests of the training loop's pieces that need no workers: the metric rows, a step's
rollout bookkeeping and dynamic filtering, the role groups, and what a resumed run reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf_workers import cluster as cluster_module
from rlhf_workers.algorithms import AdvantageResult
from rlhf_workers.checkpoint import Checkpoint
from rlhf_workers.cluster import Cluster
from rlhf_workers.data import Prompt
from rlhf_workers.reward import RewardResult
from rlhf_workers.rollout import Sample
from rlhf_workers.session import resumed_progress
from rlhf_workers.step_metrics import Timer, kl_metric, mean_stats, rollout_metrics, timing_metrics, update_metrics
from rlhf_workers.train import Rollout, kept_groups


def sample(reward: float, length: int = 3, truncated: bool = False, score: float | None = None) -> Sample:
    return Sample((1, 2), list(range(length)), [0.0] * length, truncated, reward=reward,
                  score=reward if score is None else score)


def advantages(zero_groups: int) -> AdvantageResult:
    z = torch.zeros(1, 1)
    return AdvantageResult(z, z, z, torch.zeros(1), whitened=False, gamma=1.0, zero_groups=zero_groups)


# --------------------------------------------------------------------------- metric rows


def test_rollout_metrics_cover_every_generated_sample_in_a_fixed_key_order():
    generated = [sample(1.0, 4, truncated=True), sample(0.0, 2), sample(0.5, 3, score=1.0), sample(0.5, 3)]
    row = rollout_metrics(generated, groups_kept=1, groups_generated=2, extra_logs={"chars": 7.5})
    assert list(row) == ["reward/mean", "reward/std", "reward/min", "reward/max", "score/mean", "filter/pass_rate",
                         "filter/groups_generated", "response_length/mean", "response_length/max",
                         "response/clip_ratio", "extra/chars"]
    assert row["reward/mean"] == 0.5 and row["reward/min"] == 0.0 and row["reward/max"] == 1.0
    assert row["reward/std"] == pytest.approx(float(torch.tensor([1.0, 0.0, 0.5, 0.5]).std()))
    assert row["score/mean"] == 0.625
    assert row["filter/pass_rate"] == 0.5 and row["filter/groups_generated"] == 2
    assert row["response_length/mean"] == 3.0 and row["response_length/max"] == 4
    assert row["response/clip_ratio"] == 0.25
    assert row["extra/chars"] == 7.5


def test_one_generated_sample_has_zero_reward_std():
    assert rollout_metrics([sample(0.3)], 1, 1, {})["reward/std"] == 0.0


def test_update_metrics_file_the_logprob_check_under_rollout():
    stats = {"policy_loss": 0.1, "logprob_diff_mean": 1e-6, "logprob_diff_max": 2e-6, "lr": 1e-3}
    row = update_metrics([sample(1.0), sample(0.0)], 0.02, advantages(zero_groups=1), stats)
    assert list(row) == ["reward/mean_trained", "samples", "kl", "advantages/zero_groups", "policy_loss", "lr",
                         "rollout/logprob_diff_mean", "rollout/logprob_diff_max"]
    assert row["reward/mean_trained"] == 0.5 and row["samples"] == 2 and row["kl"] == 0.02
    assert row["advantages/zero_groups"] == 1 and row["rollout/logprob_diff_max"] == 2e-6


def test_kl_metric_is_the_reward_kl_else_the_kl_loss_else_zero():
    kl, mask = torch.tensor([[0.2, 0.4, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert kl_metric(kl, mask, {"kl_loss": 5.0}, 0.1) == pytest.approx(0.3)  # KL in the reward: masked mean
    assert kl_metric(None, mask, {"kl_loss": 5.0}, 0.1) == 5.0  # KL as a loss: the trainers' number
    assert kl_metric(None, mask, {}, 0.1) == 0.0
    assert kl_metric(None, mask, {"kl_loss": 5.0}, 0.0) == 0.0  # no reference model


def test_timing_metrics_and_throughputs():
    row = timing_metrics({"generate": 2.0, "update": 1.0}, 4.0, samples=8, tokens_generated=100)
    assert list(row) == ["time/generate", "time/update", "time/step", "samples_per_second", "tokens_per_second"]
    assert row["samples_per_second"] == 2.0 and row["tokens_per_second"] == 50.0
    assert timing_metrics({}, 1.0, 0, 10)["tokens_per_second"] == pytest.approx(10 / 1e-9)  # no generation timed


def test_timer_adds_up_a_phase_entered_twice():
    t = Timer()
    for _ in range(2):
        with t("reward"):
            pass
    with pytest.raises(RuntimeError), t("update"):
        raise RuntimeError("the phase still gets its time")
    assert set(t.seconds) == {"reward", "update"} and all(v >= 0 for v in t.seconds.values())


def test_mean_stats_takes_the_largest_max_and_the_mean_of_the_rest():
    merged = mean_stats([{"policy_loss": 1.0, "logprob_diff_max": 0.1}, {"policy_loss": 3.0, "logprob_diff_max": 0.3},
                         {"critic_loss": 2.0}])
    assert merged == {"policy_loss": 2.0, "logprob_diff_max": 0.3, "critic_loss": 2.0}


# --------------------------------------------------------------------------- a step's rollout


def filtering(enabled: bool, n: int = 2, score_range=(0.0, 1.0)):
    return SimpleNamespace(n_samples_per_prompt=n,
                           dynamic_filtering=SimpleNamespace(enabled=enabled, score_range=list(score_range)))


def test_kept_groups_without_filtering_keeps_every_group():
    assert list(kept_groups(filtering(False), torch.tensor([1.0, 1.0, 0.0, 0.0]), 2)) == [0, 1]


def test_kept_groups_with_filtering_drops_groups_whose_scores_tie_on_a_bound():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert list(kept_groups(filtering(True), scores, 3)) == [1]


def test_add_round_scores_every_sample_and_keeps_only_the_kept_groups():
    prompts = [Prompt(i, f"p{i}", (i,), "") for i in range(2)]
    samples = [sample(0.0) for _ in range(4)]
    result = RewardResult(rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]), scores=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    batch = Rollout(2)
    batch.add_round(prompts, samples, result, kept=[0])
    assert [x.reward for x in batch.generated] == [1.0, 0.0, 1.0, 1.0]
    assert batch.groups == 1 and batch.prompts == [prompts[0]] and batch.samples == samples[:2]
    assert batch.groups_generated == 2 and batch.results == [result]
    batch.add_round(prompts[:1], [sample(0.0), sample(0.0)], result, kept=[])
    assert batch.groups_generated == 3 and len(batch.generated) == 6 and len(batch) == 2


# --------------------------------------------------------------------------- role groups


class FakeActor:
    """Records remote calls: ``actor.<method>.remote(arg)`` returns ``(name, method, arg)``."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, method: str):
        return SimpleNamespace(remote=lambda arg: (self.name, method, arg))


def test_role_groups_call_their_own_worker_methods(monkeypatch):
    monkeypatch.setattr(cluster_module.ray, "get", lambda refs: refs)
    cluster = Cluster(placement="colocated")
    a, b = FakeActor("a"), FakeActor("b")
    for role in ("engine", "policy", "ref", "critic"):
        cluster.group(role).actors.extend([a, b])
    assert cluster.group("engine") is cluster.engines and len(cluster.policy) == 2 and list(cluster.critic) == [a, b]
    assert cluster.policy.forward([["x"], ["y"]]) == [("a", "policy_logprobs", ["x"]), ("b", "policy_logprobs", ["y"])]
    assert cluster.ref.forward([["x"], []])[0][1] == "ref_logprobs"
    assert cluster.critic.forward([["x"], []])[0][1] == "critic_values"
    assert cluster.policy.train([[["s"]], [["t"]]]) == [("a", "train_policy", [["s"]]), ("b", "train_policy", [["t"]])]
    assert cluster.critic.train([[["s"]], []])[0][1] == "train_critic"
    assert Cluster(placement="colocated").policy.actors == []  # each cluster has its own groups


# --------------------------------------------------------------------------- resume


def test_resumed_progress_reports_the_checkpoint_and_its_steps_numbers():
    resume = Checkpoint(step=2, path=Path("/out/checkpoints/step_000002"), state={"time": "2026-01-01T00:00:00Z"})
    history = [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.4, "score/mean": 0.5, "kl": 0.01,
                                                  "samples_per_second": 3.0}]
    report = resumed_progress(resume, history)
    assert report["last_checkpoint"].step == 2 and report["last_checkpoint"].time == "2026-01-01T00:00:00Z"
    assert report["last_checkpoint"].path == "/out/checkpoints/step_000002"
    assert {k: report[k] for k in ("reward_mean", "score_mean", "kl", "samples_per_second")} == {
        "reward_mean": 0.4, "score_mean": 0.5, "kl": 0.01, "samples_per_second": 3.0}
    assert set(resumed_progress(resume, history[:1])) == {"last_checkpoint"}  # the log ends before the checkpoint
