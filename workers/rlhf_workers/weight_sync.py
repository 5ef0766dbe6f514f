"""Moving the policy's new weights from the trainers to the rollout engines after each update.

One interface, :class:`WeightSync` (``push() -> SyncReport``), chosen by placement and by
``training.weightSync.method``:

* :class:`ColocatedSync` - engine and trainer share a process (hybrid engine): each trainer
  rank streams its full parameters straight into its own engine's ``load_weights``; nothing
  leaves the process. Under ZeRO-3 the ranks gather parameter by parameter, together.
* :class:`CollectiveSync` (``method: collective``, the default for separate engines) - trainer
  rank 0 and every engine worker (``tensorParallelSize`` of them per engine) form a
  ``torch.distributed`` process group of their own (:class:`SyncGroup`: its own TCP store and
  port, so DeepSpeed's default group is never touched; NCCL on GPUs, gloo on CPUs). Rank 0
  broadcasts the parameters bucket by bucket (at most ``bucketMB`` each), one broadcast per
  bucket, packing the next bucket while the current one travels; under ZeRO-3 all trainer
  ranks gather one bucket at a time, so the full model never exists twice. Each engine worker
  receives a bucket into one buffer while it loads the previous one; both sides reuse their
  bucket buffers from push to push (:class:`BufferPool`). One driver call per engine per push,
  whatever the number of buckets. vLLM
  workers receive through :mod:`rlhf_workers.vllm_extension` (``worker_extension_cls``,
  driven with ``collective_rpc``); each tensor-parallel worker takes the full tensors and
  vLLM's own ``load_weights`` keeps its shard.
* :class:`ObjectStoreSync` (``method: objectStore``) - trainer rank 0 gathers the full state
  dict and returns it through Ray's object store; every engine loads it. Slower (a copy into
  and out of the store per engine), but needs nothing beyond Ray.

Both sides of the collective derive the same bucket layout from the parameter list
(:func:`plan_buckets`), so only the names, shapes and dtypes cross Ray, once per push.

Whatever the path, the sync is checked every step: the first optimizer step's forward pass
runs on the weights the engines sampled with, and the trainer reports
``rollout/logprob_diff_mean`` between its logprobs and the engine's (≈1e-6 on CPU fp32).
(With ``algorithm.async`` a batch sampled by an older policy differs by design; the loop
checks only batches sampled by the current one.)
"""

from __future__ import annotations

import abc
import collections
import contextlib
import functools
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator, Optional, Sequence

import ray
import torch

#: Bytes per bucket when the spec does not say (``training.weightSync.bucketMB``).
DEFAULT_BUCKET_BYTES = 64 << 20
#: Tensor offsets inside a bucket are multiples of this, so any dtype can be viewed in place.
ALIGN = 64
#: How long joining the group or one broadcast may take before it fails instead of hanging.
GROUP_TIMEOUT_S = 600.0

#: One parameter as both sides know it: (Hugging Face name, full shape, dtype name such as "float32").
TensorLayout = tuple[str, tuple[int, ...], str]


@dataclass(frozen=True)
class SyncReport:
    """What one push did: the transport, the bytes of weights moved, how long it took."""

    backend: str  #: "gloo", "nccl", "object_store" or "colocated"
    bytes: int
    seconds: float

    def metrics(self) -> dict:
        return {"weight_sync/backend": self.backend, "weight_sync/bytes": self.bytes}


class WeightSync(abc.ABC):
    @abc.abstractmethod
    def push(self) -> SyncReport:
        """Send the trainers' current weights to every engine."""

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- bucket layout


@dataclass(frozen=True)
class Bucket:
    """Consecutive parameters packed into one flat byte buffer: ``tensors[i]`` starts at ``offsets[i]``."""

    tensors: tuple[TensorLayout, ...]
    offsets: tuple[int, ...]
    nbytes: int


def tensor_bytes(layout: TensorLayout) -> int:
    _, shape, dtype = layout
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * _element_size(dtype)


@functools.lru_cache(maxsize=None)
def _element_size(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_buckets(layout: Sequence[TensorLayout], bucket_bytes: int) -> list[Bucket]:
    """Parameters in order, greedily packed into buckets of at most ``bucket_bytes``.

    A parameter larger than ``bucket_bytes`` travels alone in a bucket of its own size. Pure and
    deterministic: the sender and every receiver compute the same plan from the same layout.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket size must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    tensors: list[TensorLayout] = []
    offsets: list[int] = []
    used = 0
    for entry in layout:
        size = tensor_bytes(entry)
        if tensors and _aligned(used) + size > bucket_bytes:
            buckets.append(Bucket(tuple(tensors), tuple(offsets), used))
            tensors, offsets, used = [], [], 0
        start = _aligned(used)
        tensors.append((entry[0], tuple(entry[1]), entry[2]))
        offsets.append(start)
        used = start + size
    if tensors:
        buckets.append(Bucket(tuple(tensors), tuple(offsets), used))
    return buckets


def module_layout(module: torch.nn.Module) -> list[TensorLayout]:
    """The full (unpartitioned) shape and dtype of every parameter, ZeRO-3 shards included."""
    out = []
    for name, param in module.named_parameters():
        shape = tuple(param.ds_shape) if hasattr(param, "ds_id") else tuple(param.shape)
        out.append((name, shape, str(param.dtype).removeprefix("torch.")))
    return out


# --------------------------------------------------------------------------- the process group


def collective_backend() -> str:
    """One code path, the backend chosen by device."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class SyncGroup:
    """A process group made for the weight push: trainer rank 0 is rank 0, engine workers follow.

    It has its own TCP store (hosted by rank 0 on ``port``) and is built from the backend
    classes directly, not through ``init_process_group``, so it neither needs nor disturbs the
    default group DeepSpeed (or vLLM) set up in the same process. Construction blocks until
    every rank has joined.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = GROUP_TIMEOUT_S):
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size = rank, world_size
        self.backend = collective_backend()
        self.device = _device()
        store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        self.store = dist.PrefixStore("rlhf-weight-sync", store)
        if self.backend == "nccl":
            self.group = dist.ProcessGroupNCCL(self.store, rank, world_size)
        else:
            self.group = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
        self._tcp_store = store  # rank 0 serves the store: keep it alive as long as the group
        self.buffers = BufferPool(self.device)  #: staging (sender) or landing (receivers) buffers for buckets
        self.last_receive: Optional[ReceiveStats] = None  #: a receiver's timings of its last push

    def start_broadcast(self, tensor: torch.Tensor):
        """Start sending rank 0's ``tensor`` into every rank's ``tensor``; ``.wait()`` on the result
        before touching it (on GPUs the wait orders the current stream after the transfer)."""
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        return self.group.broadcast([tensor], options)

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.start_broadcast(tensor).wait()


@contextlib.contextmanager
def _gathered(params: list[torch.nn.Parameter]):
    """ZeRO-3 shards gathered to full tensors on every rank for the block (read-only); others as they are."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned):
        yield


def pack_bucket(bucket: Bucket, tensors: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Copy ``tensors`` (the bucket's, in its order) to their offsets in the flat byte buffer ``out``."""
    for entry, offset, tensor in zip(bucket.tensors, bucket.offsets, tensors, strict=True):
        _typed_view(out, entry, offset).copy_(tensor)
    return out


def unpack_bucket(bucket: Bucket, buffer: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for each of the bucket's tensors: views into ``buffer``, no copy."""
    for entry, offset in zip(bucket.tensors, bucket.offsets):
        yield entry[0], _typed_view(buffer, entry, offset)


def _typed_view(buffer: torch.Tensor, entry: TensorLayout, offset: int) -> torch.Tensor:
    _, shape, dtype = entry
    return buffer[offset:offset + tensor_bytes(entry)].view(getattr(torch, dtype)).view(shape)


def _storage_users(tensor: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


class BufferPool:
    """Flat byte buffers kept from bucket to bucket and from push to push.

    On CPUs a fresh buffer of tens of MiB is a fresh memory mapping whose pages all fault on
    their first write (allocating and filling 64 MiB took 120-300 ms on the loaded 2-core
    machine, refilling a kept one 12-30 ms), a cost the bare broadcast never pays; so up to
    ``keep`` buffers are kept there. On GPUs PyTorch's caching
    allocator already reuses freed blocks, and nothing is kept. A kept buffer is handed out
    again only when no tensor outside the pool still uses its memory (vLLM's layer-by-layer
    reload holds the weights of a layer until the whole layer has arrived), which is read from
    the reference count of its storage, views of views included.
    """

    def __init__(self, device: torch.device, keep: int = 6):
        self.device = device
        countable = hasattr(torch._C, "_storage_Use_Count")
        self.keep = keep if device.type == "cpu" and countable else 0
        self._kept: list[tuple[torch.Tensor, int]] = []  # (buffer, its storage's count when unused)
        self.allocations = 0  #: fresh buffers handed out so far (kept or not)

    def take(self, nbytes: int) -> torch.Tensor:
        """A buffer of ``nbytes`` that nothing else uses; its contents are undefined."""
        free = [i for i, (buf, idle) in enumerate(self._kept) if _storage_users(buf) <= idle]
        fits = [i for i in free if self._kept[i][0].numel() >= nbytes]
        if fits:
            return self._kept[min(fits, key=lambda i: self._kept[i][0].numel())][0][:nbytes]
        buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self.allocations += 1
        if len(self._kept) >= self.keep and free:  # full: a free buffer too small for this bucket makes room
            self._kept.pop(min(free, key=lambda i: self._kept[i][0].numel()))
        if len(self._kept) < self.keep:
            self._kept.append((buffer, _storage_users(buffer)))
        return buffer[:nbytes]

    @property
    def kept_bytes(self) -> int:
        return sum(buf.numel() for buf, _ in self._kept)


#: Buckets the trainer may have on the wire at once: it packs the next while one travels.
IN_FLIGHT = 2


def send_parameters(module: torch.nn.Module, bucket_bytes: int, group: Optional[SyncGroup]) -> int:
    """Trainer side of a push; every rank of the trainer world calls it, rank 0 with ``group``.

    Each bucket is one broadcast. Rank 0 copies the bucket's parameters straight into a flat
    staging buffer from the group's pool and starts its broadcast, then packs the next bucket
    while that one travels (at most :data:`IN_FLIGHT` on the wire). A bucket of one parameter
    (one larger than the bucket size) is sent from the parameter's own memory, without a copy.
    Under ZeRO-3 all ranks gather one bucket's parameters at a time and release them once rank 0
    has packed them, so the full model never exists twice. Returns the bytes sent.
    """
    params = dict(module.named_parameters())
    zero3 = any(hasattr(p, "ds_id") for p in params.values())
    if group is None and not zero3:
        return 0  # without ZeRO-3, ranks other than 0 have no part in the push
    sent = 0
    inflight: collections.deque = collections.deque()  # (work, the buffer it reads) per bucket on the wire
    for bucket in plan_buckets(module_layout(module), bucket_bytes):
        members = [params[name] for name, _, _ in bucket.tensors]
        with _gathered(members):
            if group is None:
                continue
            while len(inflight) >= IN_FLIGHT:
                inflight.popleft()[0].wait()
            data = members[0].data
            if len(members) == 1 and data.is_contiguous() and data.device == group.device:
                flat = data.reshape(-1).view(torch.uint8)
                work = group.start_broadcast(flat)
                if zero3:
                    work.wait()  # the gathered tensor is released at the end of the block
                else:
                    inflight.append((work, flat))
            else:
                staging = pack_bucket(bucket, [p.data for p in members], group.buffers.take(bucket.nbytes))
                inflight.append((group.start_broadcast(staging), staging))
            sent += bucket.nbytes
    while inflight:
        inflight.popleft()[0].wait()
    if group is not None and group.device.type == "cuda":
        torch.cuda.current_stream().synchronize()
    return sent


@dataclass
class ReceiveStats:
    """Where the engine's time went in its last push."""

    seconds: float = 0.0  #: the whole receive, loading included
    wire_wait_s: float = 0.0  #: blocked waiting for a bucket to arrive
    bytes: int = 0
    buckets: int = 0
    fresh_buffers: int = 0  #: buckets that landed in newly allocated memory (0 once the pool is warm on CPU)

    @property
    def load_s(self) -> float:
        """The rest: the engine's loader at work (in vLLM, ``reload_weights`` and its processing)."""
        return self.seconds - self.wire_wait_s


def receive_parameters(group: SyncGroup, layout: Sequence[TensorLayout], bucket_bytes: int,
                       stats: Optional[ReceiveStats] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Engine side: ``(name, tensor)`` pairs as the buckets arrive, for a ``load_weights`` to consume.

    Each bucket is one broadcast into a buffer from the group's pool; the yielded tensors are
    views into it. The first bucket is posted at once, so it travels while the loader gets
    ready (vLLM's reload sets its layers up before it reads a weight); the next bucket is
    already arriving while the loader works on the current one, and a buffer is reused only
    once the loader has let go of every view into it.
    """
    buckets = plan_buckets(layout, bucket_bytes)
    stats = stats if stats is not None else ReceiveStats()
    allocations = group.buffers.allocations

    def start(k: int):
        buffer = group.buffers.take(buckets[k].nbytes)
        return buffer, group.start_broadcast(buffer)

    def arrivals(pending):
        for k, bucket in enumerate(buckets):
            buffer, work = pending
            waited = time.perf_counter()
            work.wait()
            stats.wire_wait_s += time.perf_counter() - waited
            stats.bytes += bucket.nbytes
            stats.buckets += 1
            pending = start(k + 1) if k + 1 < len(buckets) else None
            stats.fresh_buffers = group.buffers.allocations - allocations
            yield from unpack_bucket(bucket, buffer)

    return arrivals(start(0) if buckets else None)


def receive_into(load: Callable[[Iterable[tuple[str, torch.Tensor]]], None], group: SyncGroup,
                 layout: Sequence[TensorLayout], bucket_bytes: int) -> int:
    """Run ``load`` on the incoming weights; whatever it leaves unread is still received (the
    broadcasts must all happen), and a weight it skipped is an error. Returns the bytes received;
    where the time went is left in ``group.last_receive``."""
    began = time.perf_counter()
    stats = ReceiveStats()
    stream = receive_parameters(group, layout, bucket_bytes, stats)
    seen: list[str] = []

    def counted():
        for name, tensor in stream:
            seen.append(name)
            yield name, tensor

    load(counted())
    leftover = [name for name, _ in stream]
    stats.seconds = time.perf_counter() - began
    group.last_receive = stats
    if leftover:
        raise RuntimeError(f"the engine's load_weights stopped before {len(leftover)} weights "
                           f"(first: {leftover[0]}); the weights are only partly updated")
    return stats.bytes


# --------------------------------------------------------------------------- the driver's side


def layout_bytes(layout: Sequence[TensorLayout]) -> int:
    return sum(tensor_bytes(entry) for entry in layout)


class ColocatedSync(WeightSync):
    def __init__(self, workers: Sequence[ray.actor.ActorHandle]):
        self.workers = list(workers)
        self.bytes = layout_bytes(ray.get(self.workers[0].weight_layout.remote()))

    def push(self) -> SyncReport:
        start = time.perf_counter()
        ray.get([w.sync_colocated_engine.remote() for w in self.workers])
        return SyncReport("colocated", self.bytes, time.perf_counter() - start)


class ObjectStoreSync(WeightSync):
    def __init__(self, trainers: Sequence[ray.actor.ActorHandle], engines: Sequence[ray.actor.ActorHandle]):
        self.trainers = list(trainers)
        self.engines = list(engines)
        self.bytes = layout_bytes(ray.get(self.trainers[0].weight_layout.remote()))

    def push(self) -> SyncReport:
        start = time.perf_counter()
        refs = [t.gather_weights.remote(send=(rank == 0)) for rank, t in enumerate(self.trainers)]
        weights = refs[0]  # rank 0's full state dict, left in the object store
        ray.get([e.load_engine_weights.remote(weights) for e in self.engines] + refs[1:])
        return SyncReport("object_store", self.bytes, time.perf_counter() - start)


class CollectiveSync(WeightSync):
    """Trainer rank 0 broadcasts to every engine worker over a :class:`SyncGroup` (see the module doc)."""

    def __init__(self, trainers: Sequence[ray.actor.ActorHandle], engines: Sequence[ray.actor.ActorHandle], *,
                 workers_per_engine: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.trainers = list(trainers)
        self.engines = list(engines)
        self.bucket_bytes = bucket_bytes
        self.layout = ray.get(self.trainers[0].weight_layout.remote())
        self.bytes = layout_bytes(self.layout)
        host, port = ray.get(self.trainers[0].address.remote())
        world = 1 + len(self.engines) * workers_per_engine
        joins = [self.trainers[0].join_weight_group.remote(host, port, 0, world)]
        joins += [e.join_weight_group.remote(host, port, 1 + i * workers_per_engine, world)
                  for i, e in enumerate(self.engines)]
        backends = set(ray.get(joins))
        if len(backends) != 1:
            raise RuntimeError(f"trainer and engines chose different collective backends: {sorted(backends)}")
        self.backend = backends.pop()

    def push(self) -> SyncReport:
        start = time.perf_counter()
        refs = [t.broadcast_weights.remote(self.bucket_bytes) for t in self.trainers]
        refs += [e.receive_weights.remote(self.layout, self.bucket_bytes) for e in self.engines]
        ray.get(refs)
        return SyncReport(self.backend, self.bytes, time.perf_counter() - start)
