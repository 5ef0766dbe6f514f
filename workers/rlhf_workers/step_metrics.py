"""One step's row of ``metrics.jsonl``, assembled apart from the loop.

verl keeps ``compute_data_metrics`` and ``compute_timing_metrics`` out of its trainer loop;
this module does the same for :func:`rlhf_workers.train.train`, so the loop shows the
algorithm and these functions show what is measured. Each takes plain values (samples,
tensors, the trainers' stats) and returns a dict of keys; the loop merges them into the row
in a fixed order: the step's identity, :func:`update_metrics` (when something was trained),
:func:`rollout_metrics`, then :func:`timing_metrics`. The keys and their meaning are listed
in :mod:`rlhf_workers.train`'s docstring.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Optional, Sequence

import torch

from .algorithms import AdvantageResult, masked_mean
from .rollout import Sample


class Timer:
    """Seconds per named phase of a step (``with t("update"): ...``); a phase entered twice adds up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def mean_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """The trainer workers' stats as one: the largest of ``*_max`` keys, the mean of the rest."""
    keys = {k for p in parts for k in p}
    out = {}
    for k in keys:
        vals = [p[k] for p in parts if k in p]
        out[k] = max(vals) if k.endswith("_max") else sum(vals) / len(vals)
    return out


def kl_metric(kl: Optional[torch.Tensor], action_mask: torch.Tensor, stats: dict[str, float], kl_coef: float) -> float:
    """The step's ``kl``: the mean per-token KL put into the reward when there is one, else the
    KL loss the trainers report (KL as a loss), else 0 (no reference model)."""
    if kl is not None:
        return float(masked_mean(kl, action_mask))
    if kl_coef > 0:
        return stats.get("kl_loss", 0.0)
    return 0.0


def update_metrics(trained: Sequence[Sample], kl: float, adv: AdvantageResult, stats: dict[str, float]) -> dict[str, Any]:
    """What the update saw and did: the trained samples' reward, KL, tied groups and the trainers' stats.

    The trainers' ``logprob_diff_*`` (engine vs trainer logprobs of the sampled tokens) are
    filed under ``rollout/``: they check the weight sync, not the update.
    """
    row: dict[str, Any] = {"reward/mean_trained": sum(x.reward for x in trained) / len(trained), "samples": len(trained),
                           "kl": kl}
    row["advantages/zero_groups"] = adv.zero_groups
    row.update({k: v for k, v in stats.items() if not k.startswith("logprob_diff")})
    if "logprob_diff_mean" in stats:
        row["rollout/logprob_diff_mean"] = stats["logprob_diff_mean"]
        row["rollout/logprob_diff_max"] = stats["logprob_diff_max"]
    return row


def rollout_metrics(generated: Sequence[Sample], groups_kept: int, groups_generated: int,
                    extra_logs: dict[str, Any]) -> dict[str, Any]:
    """Every sample generated in the step (kept by dynamic filtering or not): rewards, scores,
    the filter's pass rate, response lengths, and the reward's ``extra_logs`` as ``extra/<key>``.

    With no sample left (every one dropped for a reward fault) the reward statistics are NaN."""
    if not generated:
        nan = float("nan")
        return {"reward/mean": nan, "reward/std": nan, "reward/min": nan, "reward/max": nan, "score/mean": nan,
                "filter/pass_rate": groups_kept / groups_generated if groups_generated else 0.0,
                "filter/groups_generated": groups_generated, "response_length/mean": nan,
                "response_length/max": 0, "response/clip_ratio": nan, **{f"extra/{k}": v for k, v in extra_logs.items()}}
    rewards = torch.tensor([x.reward for x in generated])
    lengths = [len(x.response_ids) for x in generated]
    row: dict[str, Any] = {
        "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(generated) > 1 else 0.0,
        "reward/min": float(rewards.min()), "reward/max": float(rewards.max()),
        "score/mean": sum(x.score for x in generated) / len(generated),
        "filter/pass_rate": groups_kept / groups_generated, "filter/groups_generated": groups_generated,
        "response_length/mean": sum(lengths) / len(lengths), "response_length/max": max(lengths),
        "response/clip_ratio": sum(x.truncated for x in generated) / len(generated),
    }
    row.update({f"extra/{k}": v for k, v in extra_logs.items()})
    return row


def timing_metrics(seconds: dict[str, float], step_seconds: float, samples: int, tokens_generated: int) -> dict[str, Any]:
    """``time/<phase>`` per phase the step went through, ``time/step``, and the throughputs
    (trained samples per second of the step, generated tokens per second of generation)."""
    row: dict[str, Any] = {f"time/{k}": v for k, v in seconds.items()}
    row["time/step"] = step_seconds
    row["samples_per_second"] = samples / step_seconds
    row["tokens_per_second"] = tokens_generated / max(seconds.get("generate", 0.0), 1e-9)
    return row
