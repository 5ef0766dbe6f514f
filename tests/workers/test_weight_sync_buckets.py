"""The collective push's buckets in one process: the plan's bounds and order, packing and
unpacking across dtypes, and the buffer pool that lets buckets reuse memory only when the
loader has let go of it. Pure torch (no process group, no Ray)."""

from __future__ import annotations

import gc

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlhf_workers.weight_sync import (ALIGN, BufferPool, ReceiveStats, pack_bucket, plan_buckets, tensor_bytes,
                                      unpack_bucket)

DTYPES = ("float32", "bfloat16", "float16", "float64", "int64", "uint8")


def _random_tensor(shape, dtype: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype in ("int64", "uint8"):
        return torch.randint(0, 200, shape, generator=g).to(getattr(torch, dtype))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(getattr(torch, dtype))


layouts = st.lists(
    st.tuples(st.lists(st.integers(1, 9), min_size=0, max_size=3), st.sampled_from(DTYPES)),
    min_size=1, max_size=12,
).map(lambda entries: [(f"w{i}", tuple(shape), dtype) for i, (shape, dtype) in enumerate(entries)])


@given(layout=layouts, bound=st.integers(1, 600))
def test_plan_keeps_order_bound_and_alignment_and_packing_round_trips_every_dtype_bit_for_bit(layout, bound):
    buckets = plan_buckets(layout, bound)
    assert [t for b in buckets for t in b.tensors] == layout  # every tensor once, in the trainer's order
    for b in buckets:
        assert b.nbytes <= bound or len(b.tensors) == 1  # only a tensor larger than the bound travels alone
        assert all(o % ALIGN == 0 for o in b.offsets)  # any dtype can be viewed in place
        assert b.nbytes == b.offsets[-1] + tensor_bytes(b.tensors[-1])
    tensors = {name: _random_tensor(shape, dtype, i) for i, (name, shape, dtype) in enumerate(layout)}
    for b in buckets:
        flat = torch.full((b.nbytes,), 0xAB, dtype=torch.uint8)
        pack_bucket(b, [tensors[name] for name, _, _ in b.tensors], flat)
        got = list(unpack_bucket(b, flat))
        assert [name for name, _ in got] == [name for name, _, _ in b.tensors]
        for name, tensor in got:
            assert tensor.dtype == tensors[name].dtype and tensor.shape == tensors[name].shape
            assert torch.equal(tensor, tensors[name]), name
            assert tensor.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()  # a view, not a copy


def test_packing_takes_non_contiguous_parameters():
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # transposed: not contiguous
    (bucket,) = plan_buckets([("w", (4, 3), "float32")], 1 << 10)
    flat = pack_bucket(bucket, [weight], torch.empty(bucket.nbytes, dtype=torch.uint8))
    assert torch.equal(dict(unpack_bucket(bucket, flat))["w"], weight)


def test_pool_reuses_a_buffer_only_once_nothing_refers_to_it():
    pool = BufferPool(torch.device("cpu"), keep=2)
    first = pool.take(1000)
    first_address = first.data_ptr()
    held = first[64:128].view(torch.float32).view(4, 4)  # a view of a view, as a loader may keep
    del first
    second = pool.take(1000)
    second_address = second.data_ptr()
    assert second_address != first_address  # the first is still in use through `held`
    del second
    assert pool.take(800).data_ptr() == second_address  # free again, and big enough
    assert pool.take(800).data_ptr() == second_address  # (the one taken above was dropped at once)
    del held
    gc.collect()
    assert pool.take(500).data_ptr() in (first_address, second_address)
    assert pool.kept_bytes == 2000


def test_pool_keeps_at_most_keep_buffers_and_makes_room_for_a_larger_bucket():
    pool = BufferPool(torch.device("cpu"), keep=2)
    a, b = pool.take(100), pool.take(100)
    c = pool.take(100)  # both kept ones in use: a transient buffer, not kept
    assert pool.kept_bytes == 200
    del a, b, c
    gc.collect()
    big = pool.take(5000)  # nothing kept is big enough: a free small one makes room
    assert pool.kept_bytes == 5100 and big.numel() == 5000
    del big
    gc.collect()
    assert pool.take(4000).numel() == 4000 and pool.kept_bytes == 5100


def test_pool_keeps_nothing_off_cpu_where_the_caching_allocator_reuses_memory():
    assert BufferPool(torch.device("meta"), keep=3).keep == 0


def test_receive_stats_split_the_time_into_waiting_and_loading():
    stats = ReceiveStats(seconds=0.5, wire_wait_s=0.2, bytes=10, buckets=2)
    assert stats.load_s == pytest.approx(0.3)
