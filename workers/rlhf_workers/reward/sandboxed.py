"""Executors that never hang and never let one sample's fault end the run.

* :class:`SandboxedFunctionReward` - the user's ``reward_func`` in a :class:`~rlhf_workers.sandbox.SandboxPool`:
  the batch is split across the pool in order (``reward.batch: split``) or passed whole
  (``whole``); each call is bounded by ``reward.timeoutSeconds``. A chunk that raised is re-run
  one sample at a time, so only the samples that raise on their own are faults; so is a chunk
  that timed out while others ended, when it holds at most four samples per process.
* :class:`GuardedReward` - a remote server or a reward model, called in a thread bounded by the
  same timeout; its errors become faults of the whole call.

Both return a :class:`~.result.RewardResult` whose :attr:`faults` list the samples without a reward
(placeholders: ``reward.fallbackReward`` with ``onError: fallback``, else 0 and the loop drops them).
Only a reward that cannot be loaded at all raises (:class:`~.errors.RewardLoadError`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional, Sequence

import torch

from ..sandbox import Limits, Outcome, SandboxPool, SandboxStartError
from .contract import check_inputs, validate_reward_output
from .errors import RewardContractError, RewardError, RewardLoadError
from .faults import RewardFault
from .result import RewardExecutor, RewardResult

__all__ = ["SandboxedFunctionReward", "GuardedReward", "make_reward_executor", "limits_from_spec"]

logger = logging.getLogger(__name__)


def limits_from_spec(sandbox: dict) -> Limits:
    """:class:`~rlhf_workers.sandbox.Limits` from ``reward.sandbox`` (its snake_case dump)."""
    return Limits(cpu_seconds=sandbox.get("cpu_seconds", 60.0), memory_mb=sandbox.get("memory_mb", 8192),
                  max_processes=sandbox.get("max_processes", 256), file_size_mb=sandbox.get("file_size_mb", 64),
                  output_kb=sandbox.get("output_kb", 64))


def faulted_result(prompts: Sequence[str], kind: str, message: str, *, fallback: float, line: Optional[str] = None,
                   detail: str = "") -> RewardResult:
    """The samples of ``prompts`` without a reward of their own: placeholders and one fault each."""
    rewards = torch.full((len(prompts),), float(fallback), dtype=torch.float32)
    return RewardResult(rewards=rewards, scores=rewards.double(), scores_given=True,
                        faults=[RewardFault(kind, i, message, line, detail, str(p)[:200]) for i, p in enumerate(prompts)])


def _outcome_fault(outcome: Outcome) -> tuple[str, str, Optional[str], str]:
    error = outcome.error or {}
    message = f"{error.get('type', 'Error')}: {error.get('message', '')}".strip()
    detail = "\n".join(x for x in (error.get("traceback", ""), outcome.output) if x)
    return outcome.status, message, error.get("line"), detail


class SandboxedFunctionReward(RewardExecutor):
    """A ``reward_func`` file run in sandboxed processes (see the module docstring)."""

    def __init__(self, path: str, *, timeout: float = 60.0, parallelism: Optional[int] = None, batch: str = "split",
                 fallback: float = 0.0, limits: Optional[Limits] = None, network: bool = False,
                 read_paths: Sequence[str] = (), write_paths: Sequence[str] = (), env: Optional[dict[str, str]] = None):
        self.where, self.batch, self.fallback = str(path), batch, fallback
        self.pool = SandboxPool({"kind": "reward_func", "path": str(path)}, size=1 if batch == "whole" else parallelism,
                                timeout=timeout, limits=limits, network=network, read_paths=read_paths,
                                write_paths=write_paths, env=env)
        try:
            self.report = self.pool.start()
        except SandboxStartError as exc:
            raise RewardLoadError(f"{path}: {exc}", source=str(path)) from None
        logger.info("reward sandbox (%d processes): %s", self.pool.size,
                    "; ".join(f"{k}: {v}" for k, v in self.report.items()))

    def score(self, queries, prompts, labels=None) -> RewardResult:
        labels = check_inputs(queries, prompts, labels)
        queries, prompts = list(queries), list(prompts)
        bounds = chunk_bounds(prompts, 1 if self.batch == "whole" else self.pool.size)
        outcomes = self.pool.map([(queries[a:b], prompts[a:b], labels[a:b]) for a, b in bounds])
        again = self._rerun(bounds, outcomes)
        singles = dict(zip(again, self.pool.map([(queries[i:i + 1], prompts[i:i + 1], labels[i:i + 1]) for i in again])))
        results = []
        for (a, b), outcome in zip(bounds, outcomes):
            if a in singles:
                results += [self._result(singles[i], prompts[i:i + 1]) for i in range(a, b)]
            else:
                results.append(self._result(outcome, prompts[a:b]))
        return RewardResult.concat(results)

    def _rerun(self, bounds: list[tuple[int, int]], outcomes: list[Outcome]) -> list[int]:
        """The samples to score again one at a time, so that only the faulty ones count as faults:
        those of every chunk that raised, and of chunks that timed out when others did not (a hang
        on some samples, not on all) and they are few (each hang costs another timeout)."""
        raised = [i for (a, b), o in zip(bounds, outcomes) if o.status == "raised" and b - a > 1 for i in range(a, b)]
        timed_out = [i for (a, b), o in zip(bounds, outcomes) if o.status == "timeout" and b - a > 1
                     for i in range(a, b)]
        some_ended = any(o.status != "timeout" for o in outcomes)
        return raised + (timed_out if some_ended and len(timed_out) <= 4 * self.pool.size else [])

    def _result(self, outcome: Outcome, prompts: list) -> RewardResult:
        n = len(prompts)
        if outcome.ok:
            try:
                return validate_reward_output(outcome.value, n, prompts, source=self.where)
            except RewardContractError as exc:
                return faulted_result(prompts, "invalid", exc.message.splitlines()[0][:500], fallback=self.fallback,
                                      detail=exc.message)
        kind, message, line, detail = _outcome_fault(outcome)
        return faulted_result(prompts, kind, message, fallback=self.fallback, line=line, detail=detail)

    def close(self) -> None:
        self.pool.close()


def chunk_bounds(prompts: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of at most ``parts`` contiguous chunks of about equal size that never cut a
    prompt group (the samples of one prompt lie together, prompt-major): a reward that compares the
    samples of a group, or counts positions within it, sees each group whole."""
    n = len(prompts)
    starts = [i for i in range(n) if i == 0 or prompts[i] != prompts[i - 1]]  # where each group begins
    parts = max(1, min(parts, len(starts)))
    bounds, start = [], 0
    for k in range(1, parts):
        target = round(n * k / parts)
        cut = min((i for i in starts if i > start), key=lambda i: abs(i - target), default=None)
        if cut is None or cut >= n:
            break
        bounds.append((start, cut))
        start = cut
    bounds.append((start, n))
    return [(a, b) for a, b in bounds if b > a]


class GuardedReward(RewardExecutor):
    """Another executor (remote server, reward model) with a wall-clock bound and its errors as faults.

    A call past ``timeout`` is abandoned on its thread (a thread cannot be killed; the remote
    executor's own request timeout ends it later) and its samples count as timeouts."""

    def __init__(self, inner: RewardExecutor, *, timeout: float, fallback: float = 0.0):
        self.inner, self.timeout, self.fallback = inner, timeout, fallback

    def score(self, queries, prompts, labels=None) -> RewardResult:
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["result"] = self.inner.score(queries, prompts, labels)
            except BaseException as exc:  # noqa: BLE001 - classified below
                box["error"] = exc

        thread = threading.Thread(target=call, daemon=True, name="reward-call")
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            return faulted_result(prompts, "timeout", f"Timeout: the call did not end within {self.timeout:g}s",
                                  fallback=self.fallback)
        error = box.get("error")
        if error is None:
            return box["result"]
        kind = "invalid" if isinstance(error, RewardContractError) else "raised"
        text = error.message if isinstance(error, RewardError) else f"{type(error).__name__}: {error}"
        return faulted_result(prompts, kind, text.splitlines()[0][:500] if text else type(error).__name__,
                              fallback=self.fallback, detail=text)

    def close(self) -> None:
        self.inner.close()


def make_reward_executor(kind: str, options: dict, policy: Optional[dict] = None,
                         env: Optional[dict[str, str]] = None) -> RewardExecutor:
    """The executor a reward worker runs: ``function`` sandboxed, ``remote``/``model`` guarded.

    ``policy`` is ``spec.reward`` dumped (snake_case); None keeps the defaults. ``env``: variables
    the sandboxed function sees besides the allow-listed ones (``cluster.plain_env()``)."""
    policy = policy or {}
    timeout = float(policy.get("timeout_seconds", 60.0))
    fallback = float(policy.get("fallback_reward", 0.0)) if policy.get("on_error") == "fallback" else 0.0
    if kind == "function":
        sandbox = policy.get("sandbox") or {}
        return SandboxedFunctionReward(options["path"], timeout=timeout, parallelism=policy.get("parallelism"),
                                       batch=policy.get("batch", "split"), fallback=fallback,
                                       limits=limits_from_spec(sandbox), network=bool(sandbox.get("network", False)),
                                       read_paths=sandbox.get("read_paths", ()),
                                       write_paths=sandbox.get("write_paths", ()), env=env)
    if kind == "remote":
        from .remote import RemoteReward

        return GuardedReward(RemoteReward(**options), timeout=timeout, fallback=fallback)
    from .model import RewardModelReward

    return GuardedReward(RewardModelReward(**options), timeout=timeout, fallback=fallback)
