"""Moving the policy's new weights from the trainers to the rollout engines after each update.

One interface, :class:`WeightSync` (``push() -> seconds``), chosen by placement:

* :class:`ColocatedSync` - engine and trainer share a process (hybrid engine): each trainer
  rank streams its full parameters straight into its own engine's ``load_weights``; nothing
  leaves the process. Under ZeRO-3 the ranks gather parameter by parameter, together.
* :class:`ObjectStoreSync` - separate engine actors: trainer rank 0 gathers the full state
  dict (all ranks take part under ZeRO-3) and returns it through Ray's object store; every
  engine loads it. Correct anywhere, and what CPU clusters use.
* :class:`NcclBroadcastSync` - the GPU path for separate engines (a seam, not yet wired):
  trainer rank 0 and every engine worker join one NCCL group and rank 0 broadcasts each
  tensor; vLLM ships the receiving side as its ``nccl`` weight-transfer engine
  (``WeightTransferConfig(backend="nccl")``, ``update_weights``). Implementing ``push``
  here is all a GPU deployment needs; the driver does not change.

Whatever the path, the sync is checked every step: the first optimizer step's forward pass
runs on the weights the engines sampled with, and the trainer reports
``rollout/logprob_diff_mean`` between its logprobs and the engine's (≈1e-6 on CPU fp32).
"""

from __future__ import annotations

import abc
import time
from typing import Sequence

import ray


class WeightSync(abc.ABC):
    @abc.abstractmethod
    def push(self) -> float:
        """Send the trainers' current weights to every engine; returns the seconds it took."""


class ColocatedSync(WeightSync):
    def __init__(self, workers: Sequence[ray.actor.ActorHandle]):
        self.workers = list(workers)

    def push(self) -> float:
        start = time.perf_counter()
        ray.get([w.sync_colocated_engine.remote() for w in self.workers])
        return time.perf_counter() - start


class ObjectStoreSync(WeightSync):
    def __init__(self, trainers: Sequence[ray.actor.ActorHandle], engines: Sequence[ray.actor.ActorHandle]):
        self.trainers = list(trainers)
        self.engines = list(engines)

    def push(self) -> float:
        start = time.perf_counter()
        refs = [t.gather_weights.remote(send=(rank == 0)) for rank, t in enumerate(self.trainers)]
        weights = refs[0]  # rank 0's full state dict, left in the object store
        ray.get([e.load_engine_weights.remote(weights) for e in self.engines] + refs[1:])
        return time.perf_counter() - start


class NcclBroadcastSync(WeightSync):
    """Seam for GPU clusters: NCCL broadcast from trainer rank 0 to the engines (see module doc)."""

    def __init__(self, trainers: Sequence[ray.actor.ActorHandle], engines: Sequence[ray.actor.ActorHandle]):
        self.trainers = list(trainers)
        self.engines = list(engines)

    def push(self) -> float:
        raise NotImplementedError(
            "NCCL weight broadcast is not implemented yet; the object-store sync is used instead"
        )
