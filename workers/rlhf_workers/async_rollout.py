"""Where the loop's rollouts come from: made in place (on-policy), or ahead in a thread (``algorithm.async``).

:func:`rollout_source` gives the training loop one object with three calls, whatever the mode:
``next(t)`` (the next scored batch), ``push_weights()`` (the weight sync) and ``metrics()``.

* **synchronous** (the default): ``next`` runs the loop's own rollout function, then the
  trainers update and the weights are pushed; every sample comes from the current policy.
* **asynchronous** (``algorithm.async.enabled``, distributed placement only): a driver thread
  keeps generating and scoring batches while the trainers update. At most
  ``algorithm.async.maxStaleness`` batches are generated or waiting at any time, so a batch is
  trained on at most that many policy versions after the one that sampled it. Generation of a
  batch and the weight push exclude each other (the session's ``rollout_lock``): weights change
  only between batches, never while one is being sampled, so no sample mixes two policies. A
  batch that is still older than ``maxStaleness`` versions when the trainer takes it is dropped
  and counted. The same lock guards the data position a checkpoint saves; a run resumed from
  such a checkpoint skips the prompts of the batches that were queued but not yet trained.

  A batch sampled by an older policy is trained the way OpenRLHF's asynchronous mode trains
  it with its importance-sampling correction (``--algo.advantage.is_correction_enable``, type
  ``tis``; :func:`off_policy_correction`): the old logprobs of the PPO ratio are the trainers'
  own before the update (a forward pass), not the engines', so the clip bounds the update
  against the policy being trained, and each token's loss is weighted by the ratio of the
  trainers' policy to the sampling one, clamped to :data:`IS_WEIGHT_BOUNDS`. At the bench's
  larger size, without the weights the reward rose about half as fast per step, and with the
  engines' logprobs as the old ones about ten times more slowly (bench/README.md).
  The engines' logprobs cannot check such a batch's weight sync (the trainers no longer hold the
  weights that sampled it): ``rollout/logprob_diff_mean`` then measures how far the policy moved
  since sampling, and :func:`check_off_policy` warns when that is implausibly large.

Metrics (async only): ``async/staleness_mean`` (policy versions between sampling and training,
over the batch's samples), ``async/dropped`` (batches dropped so far), ``async/queue_depth``
(batches ready when the trainer asked), ``async/trainer_wait_s`` (the trainer waiting for a
batch), ``async/push_wait_s`` (the push waiting for a batch being generated to finish), and
``async/rollout_wait_s`` (the generator waiting for room in the queue); for a stale batch,
``async/behaviour_kl``, ``async/behaviour_logprob_diff``,
``async/is_weight_mean`` and ``async/is_weight_clipped`` (:func:`off_policy_correction`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from .step_metrics import Timer
from .weight_sync import SyncReport

logger = logging.getLogger(__name__)

#: Seconds between checks of the stop flag while a thread waits.
POLL_S = 0.2

#: Bounds of a stale batch's per-token importance weight (trainers' policy over the sampling
#: policy); OpenRLHF's defaults for ``--algo.advantage.is_correction_threshold`` ("tis").
IS_WEIGHT_BOUNDS = (0.5, 5.0)
#: Mean |trainers' - engines' logprob| per token of a stale batch above which the loop warns.
#: One update of the bench's larger run moved them by 0.2 on average and by 1.0 on the step
#: where the reward jumped; engines left on older weights for several steps differ by more.
OFF_POLICY_WARN_NATS = 2.0


class SyncRollouts:
    """On-policy: each batch is generated when the loop asks for it, with the current weights."""

    def __init__(self, session, collect: Callable[[Any, Timer], Any]):
        self.session, self.collect = session, collect

    def more(self) -> bool:
        return not self.session.prompts.exhausted

    def next(self, t: Timer):
        return self.collect(self.session, t)

    def push_weights(self) -> SyncReport:
        return self.session.cluster.weight_sync.push()

    def stale(self, batch) -> bool:
        return False

    def metrics(self) -> dict[str, Any]:
        return {}


@dataclass
class _Ready:
    batch: Any
    version: int  #: the policy version that sampled it
    seconds: dict[str, float]  #: its generate/reward times


class AsyncRollouts:
    """Batches generated ahead by a thread; see the module doc."""

    def __init__(self, session, collect: Callable[[Any, Timer], Any], max_staleness: int):
        self.session, self.collect = session, collect
        self.max_staleness = max_staleness
        self.lock: threading.Lock = session.rollout_lock
        self.version = 0  #: weight pushes so far: the policy the engines hold
        self.dropped = 0
        self._ready: deque[_Ready] = deque()
        self._changed = threading.Condition()  # a batch is ready, or the thread ended
        self._slots = threading.Semaphore(max_staleness)  # generated-or-waiting batches at most
        self._stop = threading.Event()
        self._done = False  #: the thread found the data exhausted, failed, or was stopped
        self._error: Optional[BaseException] = None
        self._row: dict[str, Any] = {}
        self._trainer_wait = 0.0
        self._rollout_wait = 0.0
        self._thread = threading.Thread(target=self._run, name="rlhf-async-rollout", daemon=True)
        self._thread.start()

    # ---- the generating thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                waited = time.perf_counter()
                while not self._slots.acquire(timeout=POLL_S):
                    if self._stop.is_set():
                        return
                self._rollout_wait += time.perf_counter() - waited
                with self.lock:  # no weight push while this batch is sampled
                    if self.session.prompts.exhausted or self._stop.is_set():
                        return
                    timer = Timer()
                    version = self.version
                    batch = self.collect(self.session, timer)
                with self._changed:
                    self._ready.append(_Ready(batch, version, timer.seconds))
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            self._error = exc
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    # ---- the training loop's side
    def more(self) -> bool:
        """Whether another batch comes (waits until one is ready or the thread has ended)."""
        waited = time.perf_counter()
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self._done)
            self._trainer_wait = time.perf_counter() - waited
            return bool(self._ready) or self._error is not None

    def next(self, t: Timer):
        """The oldest ready batch not older than ``maxStaleness`` policy versions (call after :meth:`more`)."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._ready or self._done)
                if not self._ready:
                    if self._error is not None:
                        raise self._error
                    raise RuntimeError("async: no batch left (call more() first)")
                depth = len(self._ready)
                item = self._ready.popleft()
            self._slots.release()  # room for the thread to generate the next one
            staleness = self.version - item.version
            if staleness <= self.max_staleness:
                break
            self.dropped += 1
            logger.warning("async: dropped a batch sampled %d policy versions ago (maxStaleness %d)",
                           staleness, self.max_staleness)
            if not self.more():
                raise RuntimeError("async: every remaining batch was too stale to train on")
        for name, seconds in item.seconds.items():
            t.seconds[name] = t.seconds.get(name, 0.0) + seconds
        self._row = {"async/staleness_mean": float(staleness), "async/queue_depth": depth,
                     "async/trainer_wait_s": self._trainer_wait}
        return item.batch

    def push_weights(self) -> SyncReport:
        waited = time.perf_counter()
        with self.lock:  # between two batches' generation
            self._row["async/push_wait_s"] = time.perf_counter() - waited
            report = self.session.cluster.weight_sync.push()
            self.version += 1
        return report

    def stale(self, batch) -> bool:
        """Whether the batch just taken was sampled by an older policy than the trainers hold."""
        return self._row.get("async/staleness_mean", 0.0) > 0

    def metrics(self) -> dict[str, Any]:
        row = dict(self._row, **{"async/dropped": self.dropped, "async/rollout_wait_s": self._rollout_wait})
        self._rollout_wait = 0.0
        return row

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=600)
        if self._thread.is_alive():
            logger.warning("async: the rollout thread did not stop within 600 s")


@dataclass
class OffPolicyCorrection:
    """How a stale batch is trained on: truncated importance weights per token, and what they measured."""

    weights: torch.Tensor  #: ``[B, T]``, clamp(pi_trainers / pi_sampling, *IS_WEIGHT_BOUNDS), 0 on padding
    metrics: dict[str, float]

    def weigh(self, advantages: torch.Tensor) -> torch.Tensor:
        """The advantages scaled by the weights. The PPO loss of a token is ``-min(r A, clip(r) A)``:
        for a weight ``w > 0`` that of ``w A`` is ``w`` times it, so this weighs each token's loss
        exactly as OpenRLHF's truncated importance sampling ("tis") does."""
        return advantages * self.weights


def off_policy_correction(trainer_logprobs: torch.Tensor, sampling_logprobs: torch.Tensor,
                          mask: torch.Tensor) -> OffPolicyCorrection:
    """Truncated importance sampling for a batch sampled by an older policy (``algorithm.async``).

    As in OpenRLHF's asynchronous mode, the PPO ratio is taken against the trainers' logprobs
    before the update (``trainer_logprobs``, its "old" policy), and each token's loss is weighted
    by ``pi_trainers / pi_sampling`` from the engines' logprobs (``sampling_logprobs``), clamped
    to :data:`IS_WEIGHT_BOUNDS` and not differentiated. The metrics measure how far the sampling
    policy was from the trained one: ``async/behaviour_kl`` (mean of sampling minus trainer
    logprob over the response tokens, OpenRLHF's ``vllm_kl``), ``async/behaviour_logprob_diff``
    (mean absolute difference), ``async/is_weight_mean`` and ``async/is_weight_clipped`` (share
    of tokens whose weight the bounds cut).
    """
    mask = mask.to(trainer_logprobs.dtype)
    tokens = mask.sum().clamp(min=1.0)
    log_ratio = (trainer_logprobs - sampling_logprobs) * mask
    raw = log_ratio.clamp(-20.0, 20.0).exp()
    low, high = IS_WEIGHT_BOUNDS
    weights = raw.clamp(low, high) * mask
    metrics = {
        "async/behaviour_kl": float((-log_ratio).sum() / tokens),
        "async/behaviour_logprob_diff": float(log_ratio.abs().sum() / tokens),
        "async/is_weight_mean": float(weights.sum() / tokens),
        "async/is_weight_clipped": float((((raw < low) | (raw > high)).to(mask.dtype) * mask).sum() / tokens),
    }
    return OffPolicyCorrection(weights.detach(), metrics)


def check_off_policy(stats: dict[str, float]) -> bool:
    """Warn when the trainers' logprobs of a stale batch's sampled tokens (before the update) are
    implausibly far from the engines': more than :data:`OFF_POLICY_WARN_NATS` per token on average."""
    diff = stats.get("logprob_diff_mean", 0.0)
    if diff <= OFF_POLICY_WARN_NATS:
        return False
    logger.warning("async: the trainers' logprobs of a stale batch's tokens differ from the engines' by %.2f nats per "
                   "token: either the updates since it was sampled moved the policy that far (lower the learning "
                   "rate or maxStaleness), or a weight push did not arrive", diff)
    return True


@contextmanager
def rollout_source(session, collect: Callable[[Any, Timer], Any]) -> Iterator[SyncRollouts | AsyncRollouts]:
    """Synchronous rollouts, or (``algorithm.async.enabled``) a thread running ahead, stopped on exit."""
    spec = session.spec
    if not spec.algorithm.async_.enabled:
        yield SyncRollouts(session, collect)
        return
    if session.placement != "distributed":
        raise ValueError("algorithm.async.enabled: needs cluster.placement distributed (the colocated placement "
                         "runs generation and training in the same processes, one after the other)")
    source = AsyncRollouts(session, collect, spec.algorithm.async_.max_staleness)
    session.reporter.message(f"async training: generation runs up to {source.max_staleness} "
                             "policy version(s) ahead of the trainers")
    try:
        yield source
    finally:
        source.close()
