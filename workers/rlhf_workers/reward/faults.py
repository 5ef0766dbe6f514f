"""Reward faults counted apart from low rewards: how a sample's reward call ended, and when to stop.

Every reward call ends ``ok``, ``raised``, ``timeout`` or ``invalid`` (the output broke the
contract). A faulted sample carries a :class:`RewardFault` in :attr:`RewardResult.faults
<rlhf_workers.reward.result.RewardResult.faults>`; the spec's fault policy
(:class:`rlhf_api.spec.RewardFaultPolicy`, on ``reward`` and on ``agent``) decides what it becomes:
``skip`` drops it (its group for group estimators), ``fallback`` gives it ``fallbackReward``.

:class:`FaultWindow` counts faults per step (``reward/errors/raised|timeout|invalid`` and
``reward/error_rate`` in ``metrics.jsonl``) and raises :class:`RewardFaultsExceeded` when the share
of faulted samples over the last ``errorWindowSteps`` steps passes ``maxErrorRate``, quoting the
first faults (sample, exception, the line of the user's file).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from .errors import RewardError

__all__ = ["FAULT_KINDS", "RewardFault", "FaultWindow", "RewardFaultsExceeded"]

FAULT_KINDS = ("raised", "timeout", "invalid")


@dataclass
class RewardFault:
    """Why one sample has no reward.

    Attributes:
        kind: ``raised``, ``timeout`` or ``invalid``.
        sample_index: the sample's index in the batch it was scored in.
        message: the exception (``ValueError: ...``) or what was wrong.
        line: ``file:line: code`` of the user's code where it raised, when known.
        detail: the traceback or the tail of what the call printed.
        prompt: the sample's prompt (its start), to find it in the data.
    """

    kind: str
    sample_index: int
    message: str
    line: Optional[str] = None
    detail: str = ""
    prompt: str = ""

    def shifted(self, offset: int) -> "RewardFault":
        return replace(self, sample_index=self.sample_index + offset)

    def describe(self) -> str:
        where = f" at {self.line}" if self.line else ""
        prompt = f" (prompt {self.prompt[:80]!r})" if self.prompt else ""
        return f"sample {self.sample_index}{prompt}: {self.kind}: {self.message}{where}"


class RewardFaultsExceeded(RewardError):
    """Too many reward faults over the window: the job stops (condition reason ``RewardFaults``)."""

    reason = "RewardFaults"


class FaultWindow:
    """Per-step fault counts and the windowed fault rate of a run (see the module docstring)."""

    def __init__(self, max_error_rate: float, window_steps: int, quote: int = 3):
        self.max_error_rate, self.quote = max_error_rate, quote
        self.window: deque[tuple[int, int]] = deque(maxlen=window_steps)  # (faulted, samples) per step
        self.totals = {kind: 0 for kind in FAULT_KINDS}
        self.first: list[tuple[int, RewardFault]] = []  # (step, fault), the run's first few

    def record(self, step: int, faults: Sequence[RewardFault], samples: int) -> dict[str, float]:
        """Count one step's faults; its metrics (``reward/errors/<kind>``, ``reward/error_rate``)."""
        counts = {kind: sum(f.kind == kind for f in faults) for kind in FAULT_KINDS}
        for kind, count in counts.items():
            self.totals[kind] += count
        for fault in faults[: max(0, self.quote - len(self.first))]:
            self.first.append((step, fault))
        self.window.append((len(faults), samples))
        row: dict[str, float] = {f"reward/errors/{kind}": count for kind, count in counts.items()}
        row["reward/error_rate"] = len(faults) / samples if samples else 0.0
        return row

    @classmethod
    def for_policy(cls, policy) -> "FaultWindow":
        """The window of ``spec.reward`` or ``spec.agent`` (both carry the fault policy); defaults without one."""
        if policy is None:
            return cls(max_error_rate=0.2, window_steps=5)
        return cls(policy.max_error_rate, policy.error_window_steps)

    def progress(self) -> dict:
        """The progress report's fields: the run's fault counts and the windowed rate."""
        from rlhf_api.progress import RewardErrorCounts

        return {"reward_errors": RewardErrorCounts(**self.totals), "reward_error_rate": self.rate}

    @property
    def rate(self) -> float:
        """Faulted share of the samples of the steps in the window."""
        faulted, samples = sum(f for f, _ in self.window), sum(s for _, s in self.window)
        return faulted / samples if samples else 0.0

    def check(self) -> None:
        """Raise :class:`RewardFaultsExceeded` when the windowed rate passes the bound."""
        if self.rate <= self.max_error_rate or not any(f for f, _ in self.window):
            return
        faulted, samples = sum(f for f, _ in self.window), sum(s for _, s in self.window)
        quoted = "\n".join(f"  step {step + 1}, {fault.describe()}" for step, fault in self.first)
        detail = next((f.detail for _, f in self.first if f.detail), "")
        raise RewardFaultsExceeded(
            f"{faulted} of {samples} samples of the last {len(self.window)} step(s) had no reward "
            f"({self.rate:.0%} > maxErrorRate {self.max_error_rate:.0%}); first errors:\n{quoted}"
            + (f"\n{detail.rstrip()[-1500:]}" if detail else "")
            + "\nFix the reward code (`rlhf test-reward` runs it on a few samples), or raise maxErrorRate / "
              "timeoutSeconds if these faults are expected.")
