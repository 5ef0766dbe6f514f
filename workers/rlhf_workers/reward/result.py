"""What every reward executor returns (:class:`RewardResult`) and the interface they share
(:class:`RewardExecutor`), so a sandboxed or parallel executor can be dropped in later."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

__all__ = ["RewardResult", "RewardExecutor"]


@dataclass
class RewardResult:
    """Validated output of one reward call over ``N`` samples.

    Attributes:
        rewards: float32 tensor ``[N]`` - used for advantages.
        scores: tensor ``[N]`` - used for dynamic filtering; ``rewards`` when not given. In the
            precision the reward returned them (float64 for Python floats), so a group mean that
            lands on a filter bound is judged as the user wrote it.
        extra_logs: name -> float; tensors/arrays/lists reduced by mean, bools/ints cast.
        extra_logs_per_sample: name -> float tensor ``[N]`` for extra_logs values that had
            exactly one entry per sample (kept for per-sample display).
        scores_given: whether the function returned ``scores`` itself.
        warnings: contract-conforming oddities worth showing (dtype casts, unknown keys,
            scores outside [0, 1], ...).
        faults: one :class:`~rlhf_workers.reward.faults.RewardFault` per sample whose call raised,
            timed out or broke the contract (its reward and score are placeholders: the fallback
            reward, or 0 when the sample is to be skipped); empty when every call ended ok.
    """

    rewards: torch.Tensor
    scores: torch.Tensor
    extra_logs: dict[str, float] = field(default_factory=dict)
    extra_logs_per_sample: dict[str, torch.Tensor] = field(default_factory=dict)
    scores_given: bool = False
    warnings: list[str] = field(default_factory=list)
    faults: list = field(default_factory=list)

    def faulted(self) -> set[int]:
        """Indices of the samples that have no reward of their own."""
        return {f.sample_index for f in self.faults}

    def __len__(self) -> int:
        return int(self.rewards.numel())

    def to_openrlhf(self) -> dict[str, Any]:
        """The dict OpenRLHF's reward plumbing consumes (per-sample extra logs where available)."""
        logs: dict[str, torch.Tensor] = {}
        n = len(self)
        for key, value in self.extra_logs.items():
            logs[key] = self.extra_logs_per_sample.get(key, torch.full((n,), value, dtype=torch.float32))
        return {"rewards": self.rewards, "scores": self.scores, "extra_logs": logs}

    @staticmethod
    def concat(parts: Sequence["RewardResult"]) -> "RewardResult":
        """Join results of consecutive chunks of one batch (scalar logs: size-weighted mean)."""
        if not parts:
            raise ValueError("no reward results to concatenate")
        if len(parts) == 1:
            return parts[0]
        sizes = [len(p) for p in parts]
        logs: dict[str, float] = {}
        for key in dict.fromkeys(k for p in parts for k in p.extra_logs):
            pairs = [(p.extra_logs[key], s) for p, s in zip(parts, sizes) if key in p.extra_logs]
            weight = sum(s for _, s in pairs)
            logs[key] = sum(v * s for v, s in pairs) / weight if weight else float("nan")
        per_sample = {
            key: torch.cat([p.extra_logs_per_sample[key] for p in parts])
            for key in parts[0].extra_logs_per_sample
            if all(key in p.extra_logs_per_sample for p in parts)
        }
        warnings = list(dict.fromkeys(w for p in parts for w in p.warnings))
        offsets = [sum(sizes[:k]) for k in range(len(parts))]
        faults = [f.shifted(offset) for p, offset in zip(parts, offsets) for f in p.faults]
        return RewardResult(
            rewards=torch.cat([p.rewards for p in parts]),
            scores=torch.cat([p.scores for p in parts]),
            extra_logs=logs,
            extra_logs_per_sample=per_sample,
            scores_given=all(p.scores_given for p in parts),
            warnings=warnings,
            faults=faults,
        )


class RewardExecutor(abc.ABC):
    """Something that scores a batch: ``score(queries, prompts, labels) -> RewardResult``.

    Seam for future sandboxed / process-pool executors. Implementations must raise
    :class:`RewardError` subclasses for reward faults.
    """

    @abc.abstractmethod
    def score(self, queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None
              ) -> RewardResult:
        ...

    def close(self) -> None:
        """Release resources (no-op by default)."""

    def __enter__(self) -> "RewardExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

