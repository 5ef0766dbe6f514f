"""The receiving side of the collective weight push, inside vLLM's own worker processes.

vLLM mixes the class named by ``LLM(worker_extension_cls=...)`` into every worker it starts
(one per tensor-parallel rank) and runs its methods through ``LLM.collective_rpc``. Method
names carry an ``rlhf_`` prefix because vLLM refuses an extension that shadows a worker
attribute. Only plain values (host, port, ranks, the parameter layout) go through
``collective_rpc``; the tensors travel over the :class:`~rlhf_workers.weight_sync.SyncGroup`.

Each worker receives every full tensor and hands the stream to the worker's
``reload_weights``, where the model's ``load_weights`` keeps the shard of its tensor-parallel
rank and applies vLLM's processing after loading (CPU weight repacking included).
"""

from __future__ import annotations

from typing import Optional, Sequence

from .weight_sync import SyncGroup, TensorLayout, receive_into

#: The qualified name to pass as ``worker_extension_cls``.
QUALNAME = f"{__name__}.WeightReceiverExtension"


class WeightReceiverExtension:
    """Methods vLLM adds to its worker class; ``self`` is the vLLM worker."""

    _rlhf_group: Optional[SyncGroup] = None

    def rlhf_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> str:
        """Join the trainer's weight-sync group as rank ``first_rank`` + this worker's rank in its engine."""
        self._rlhf_group = SyncGroup(host, port, first_rank + self.rank, world_size)
        return self._rlhf_group.backend

    def rlhf_receive_weights(self, layout: Sequence[Sequence], bucket_bytes: int) -> int:
        """Receive one push and load it in place; returns the bytes received."""
        if self._rlhf_group is None:
            raise RuntimeError("rlhf_receive_weights before rlhf_join_weight_group")
        # collective_rpc may hand tuples back as lists: rebuild the layout's tuples
        entries: list[TensorLayout] = [(str(name), tuple(int(d) for d in shape), str(dtype))
                                       for name, shape, dtype in layout]
        return receive_into(lambda weights: self.reload_weights(weights_iterator=weights),
                            self._rlhf_group, entries, int(bucket_bytes))

    def rlhf_last_receive(self) -> Optional[dict]:
        """Where this worker's last push spent its time: ``seconds``, ``wire_wait_s`` (waiting for
        buckets), ``load_s`` (vLLM loading), ``bytes``, ``buckets`` and ``fresh_buffers``; None
        before any push."""
        stats = self._rlhf_group.last_receive if self._rlhf_group is not None else None
        if stats is None:
            return None
        return {"seconds": stats.seconds, "wire_wait_s": stats.wire_wait_s, "load_s": stats.load_s,
                "bytes": stats.bytes, "buckets": stats.buckets, "fresh_buffers": stats.fresh_buffers}
