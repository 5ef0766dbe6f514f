"""Weight sync: the collective push against the object store and a bare broadcast, in one run.

The issue's goals (issue 14, "Weight sync over a collective"), for a random-init model of
about 0.5B parameters in bf16 pushed from a DeepSpeed trainer to a separate vLLM engine process:

* the collective push (``training.weightSync.method: collective``) takes at most 1.3x the time
  of a bare ``torch.distributed`` broadcast of the same tensors between the same processes;
* it is at least 3x faster than the object-store push (``method: objectStore``).

One DeepSpeed trainer (ZeRO stage ``--zero-stage``) and one vLLM engine, each in its own Ray
actor process, started by ``Cluster.start`` in the distributed placement as a job starts them.
On those two actors, with the same backend (gloo on CPUs, NCCL on GPUs):

* **collective push** - ``cluster.weight_sync.push()``'s calls: buckets gathered and packed on
  the trainer, broadcast over the sync group, received in the vLLM worker through the worker
  extension and loaded in place; split into the time until the trainer's last bucket is on
  the wire, and the engine's time waiting for buckets versus inside vLLM's ``reload_weights``;
* **object store** - ``ObjectStoreSync`` on the same two actors: the full state dict through Ray;
* **bare broadcast** - the same tensors (gathered once beforehand) broadcast one by one over the
  same sync group between the same two processes into buffers allocated once: transport only,
  no gathering, packing or loading. The floor the collective push is compared to;
* **vLLM load only** - the engine reloading a state dict already in its process: the part of
  both pushes that no transport can remove.

Every path runs once to warm up, then ``--repeats`` rounds, each running every path once in
an order rotated from round to round (so a change in the machine's load hits all of them); the
median and the best (least disturbed) run of each path are reported with bytes/s and the
two ratios. On a shared machine read the best runs: the medians there move with others' load.

    python bench/weight_sync.py                  # ~25M fp32 parameters (97 MiB), about a minute on 2 cores
    python bench/weight_sync.py --size 135m      # ~0.13B fp32 parameters (0.5 GiB)
    python bench/weight_sync.py --size 0.5b      # ~0.46B parameters: the issue's size (bf16 on GPUs, 0.9 GiB;
                                                 # fp32 on CPU, 1.7 GiB; there add --zero-stage 0 --repeats 3)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for key, value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(key, value)

#: Model shapes (Llama, byte vocabulary): head_dim 64 everywhere, which vLLM's CPU attention supports.
SIZES = {
    "cpu": dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8, intermediate_size=2048),
    "135m": dict(hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=16, intermediate_size=4096),
    "0.5b": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=16, intermediate_size=4864),
}
GOAL_VS_BARE = 1.3
GOAL_VS_OBJECT_STORE = 3.0


# --------------------------------------------------------------------------- code run inside the two actors
# (through Ray's ``__ray_call__`` on the job's own RoleWorker actors, and vLLM's ``collective_rpc``
# inside the engine's worker: the same two processes and the same sync group as the push)


def _trainer_keep_full_weights(worker) -> int:
    """Trainer: keep the full weights at hand (ZeRO-3: gathered copies, made once outside any timing;
    otherwise the parameters themselves, so a large model is not held twice)."""
    worker.bench_tensors = [t.detach() for _, t in worker.policy.iter_weights(clone=False)]
    return sum(t.numel() * t.element_size() for t in worker.bench_tensors)


def _trainer_bare_send(worker) -> int:
    import torch

    for tensor in worker.bench_tensors:
        worker.sync_group.broadcast(tensor.reshape(-1).view(torch.uint8))  # as bytes, as the push sends them
    return sum(t.numel() * t.element_size() for t in worker.bench_tensors)


def _vllm_bare_receive(vllm_worker, layout) -> int:
    """vLLM worker: receive the same tensors, one broadcast each, into buffers allocated once."""
    import torch

    group = vllm_worker._rlhf_group
    if getattr(vllm_worker, "bench_buffers", None) is None:
        vllm_worker.bench_buffers = [torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=group.device)
                                     for _, shape, dtype in layout]
    for buffer in vllm_worker.bench_buffers:
        group.broadcast(buffer.reshape(-1).view(torch.uint8))
    return sum(b.numel() * b.element_size() for b in vllm_worker.bench_buffers)


def _engine_bare_receive(worker, layout) -> int:
    return worker.engine.llm.collective_rpc(_vllm_bare_receive, args=(layout,))[0]


def _engine_keep_weights(worker, weights) -> int:
    worker.bench_weights = weights  # the state dict, already in this process
    return len(weights)


def _engine_load_only(worker) -> None:
    worker.engine.load_weights(worker.bench_weights)  # vLLM's reload, as the push ends with


def _engine_last_receive(worker) -> dict:
    return worker.engine.llm.collective_rpc("rlhf_last_receive")[0]


# --------------------------------------------------------------------------- the timed paths


class Paths:
    """Each method runs one sync and returns its wall seconds (as the driver sees them)."""

    def __init__(self, cluster, object_store):
        import ray

        self.ray = ray
        self.sync = cluster.weight_sync
        self.trainer, self.engine = cluster.policy.actors[0], cluster.engines.actors[0]
        self.trainers = cluster.policy.actors
        self.object_store = object_store
        self.extra: dict[str, list[float]] = {"trainer_sent": [], "engine_wire_wait": [], "engine_load": []}
        ray.get([t.__ray_call__.remote(_trainer_keep_full_weights) for t in self.trainers])
        refs = [t.gather_weights.remote(send=(rank == 0)) for rank, t in enumerate(self.trainers)]
        ray.get([self.engine.__ray_call__.remote(_engine_keep_weights, refs[0])] + refs[1:])

    def collective(self) -> float:
        """The job's push (the same calls as ``CollectiveSync.push``), also timed when the trainer is done."""
        ray, sync = self.ray, self.sync
        start = time.perf_counter()
        sends = [t.broadcast_weights.remote(sync.bucket_bytes) for t in sync.trainers]
        loads = [e.receive_weights.remote(sync.layout, sync.bucket_bytes) for e in sync.engines]
        ray.get(sends)
        sent = time.perf_counter() - start
        ray.get(loads)
        seconds = time.perf_counter() - start
        stats = ray.get(self.engine.__ray_call__.remote(_engine_last_receive))
        self.extra["trainer_sent"].append(sent)
        self.extra["engine_wire_wait"].append(stats["wire_wait_s"])
        self.extra["engine_load"].append(stats["load_s"])
        self.last_receive = stats
        return seconds

    def object_store_push(self) -> float:
        return wall(self.object_store.push)

    def bare_broadcast(self) -> float:
        ray = self.ray
        start = time.perf_counter()
        sent, received = ray.get([self.trainer.__ray_call__.remote(_trainer_bare_send),
                                  self.engine.__ray_call__.remote(_engine_bare_receive, self.sync.layout)])
        seconds = time.perf_counter() - start
        if sent != received:
            raise RuntimeError(f"bare broadcast: {sent} bytes sent, {received} received")
        return seconds

    def load_only(self) -> float:
        return wall(lambda: self.ray.get(self.engine.__ray_call__.remote(_engine_load_only)))


def wall(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(paths: Paths, repeats: int) -> dict[str, list[float]]:
    """One warm-up of each path, then ``repeats`` rounds; each round runs every path once, in
    an order rotated from round to round, so a change in the machine's load hits all of them."""
    runs = {"collective": paths.collective, "object_store": paths.object_store_push,
            "bare_broadcast": paths.bare_broadcast, "vllm_load_only": paths.load_only}
    for run in runs.values():
        run()
    for values in paths.extra.values():
        values.clear()
    results: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(runs[name]())
    results.update(paths.extra)
    return results


def build(size: str, directory: Path, zero_stage: int, bucket_mb: int):
    from rlhf_api.spec import RLHFJobSpec
    from rlhf_workers.cluster import Cluster
    from rlhf_workers.tiny import make_tiny_model

    model = make_tiny_model(directory / "model", **SIZES[size])
    prompts = directory / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    spec = RLHFJobSpec.model_validate({
        "model": {"path": str(model)}, "data": {"prompts": str(prompts)},
        "reward": {"function": {"path": str(ROOT / "examples" / "quickstart" / "reward_func.py")}},
        "algorithm": {"advantageEstimator": "reinforce"},
        "rollout": {"backend": "vllm", "engines": 1, "maxNewTokens": 8, "promptMaxLen": 16, "gpuMemoryUtilization": 0.5},
        "training": {"trainers": 1, "zeroStage": zero_stage, "trainBatchSize": 8, "microBatchSize": 8,
                     "bf16": size == "0.5b", "weightSync": {"method": "collective", "bucketMB": bucket_mb}},
        "cluster": {"placement": "distributed"},
    })
    cluster = Cluster.start(spec, placement="distributed", reward=None, total_optimizer_steps=1, max_model_len=64,
                            threads=1)
    return model, spec, cluster


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds after the warm-up")
    parser.add_argument("--zero-stage", type=int, default=3, choices=(0, 1, 2, 3))
    parser.add_argument("--bucket-mb", type=int, default=64, help="training.weightSync.bucketMB (its default: 64)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    import ray

    from rlhf_workers.weight_sync import ObjectStoreSync

    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            _, _, cluster = build(args.size, Path(tmp), args.zero_stage, args.bucket_mb)
            try:
                collective = cluster.weight_sync
                nbytes = collective.bytes
                dtypes = sorted({dtype for _, _, dtype in collective.layout})
                print(f"model: {args.size}, {nbytes / 2**20:.1f} MiB of weights ({', '.join(dtypes)}), "
                      f"{len(collective.layout)} tensors, backend {collective.backend}, ZeRO-{args.zero_stage}, "
                      f"buckets of {args.bucket_mb} MiB; started in {time.perf_counter() - started:.0f} s", flush=True)
                paths = Paths(cluster, ObjectStoreSync(cluster.policy.actors, cluster.engines.actors))
                results = measure(paths, args.repeats)
                last = paths.last_receive
                print(f"engine, last push: {last['buckets']} buckets, {last['fresh_buffers']} of them into freshly "
                      f"allocated memory (the rest reused)", flush=True)
            finally:
                cluster.shutdown()
    finally:
        ray.shutdown()
    return report(results, nbytes, args)


LABELS = {
    "collective": "collective push",
    "trainer_sent": "  trainer sent",
    "engine_wire_wait": "  engine waited",
    "engine_load": "  engine loaded",
    "object_store": "object store",
    "bare_broadcast": "bare broadcast",
    "vllm_load_only": "vLLM load only",
}
NOTES = """
collective push: the job's push, trainer call to the engine's last weight loaded; of it
  trainer sent: until the trainer's last bucket was on the wire;
  engine waited / loaded: the engine's time blocked on the next bucket / in vLLM's reload_weights.
object store: training.weightSync.method objectStore on the same two actors (load included).
bare broadcast: the same tensors, the same two processes and sync group, one broadcast per tensor
  into buffers allocated once: transport only, no gather, packing or loading.
vLLM load only: the engine reloading a state dict already in its process (what both pushes end with)."""


def report(results: dict[str, list[float]], nbytes: int, args) -> int:
    median = {k: statistics.median(v) for k, v in results.items()}
    best = {k: min(v) for k, v in results.items()}
    print(f"\n{'path':<18}{'median s':>10}{'GB/s':>7}{'best s':>9}{'GB/s':>7}   runs")
    for name, label in LABELS.items():
        runs = " ".join(f"{s:.3f}" for s in results[name])
        moved = name in ("collective", "object_store", "bare_broadcast")
        rate = (lambda sec: f"{nbytes / sec / 1e9:>7.2f}" if moved else f"{'':>7}")
        print(f"{label:<18}{median[name]:>10.3f}{rate(median[name])}{best[name]:>9.3f}{rate(best[name])}   {runs}")
    print(NOTES)
    ratios = {}
    for stat, values in (("median", median), ("best", best)):
        vs_bare = values["collective"] / values["bare_broadcast"]
        vs_store = values["object_store"] / values["collective"]
        ratios[stat] = {"collective_vs_bare": vs_bare, "object_store_vs_collective": vs_store}
        print(f"\n{stat} runs:")
        print(f"  collective / bare broadcast: {vs_bare:.2f}x  (goal <= {GOAL_VS_BARE}x: "
              f"{'met' if vs_bare <= GOAL_VS_BARE else 'NOT met'})")
        print(f"  object store / collective:   {vs_store:.2f}x  (goal >= {GOAL_VS_OBJECT_STORE}x: "
              f"{'met' if vs_store >= GOAL_VS_OBJECT_STORE else 'NOT met'})")
        print(f"  vLLM load only / bare broadcast: {values['vllm_load_only'] / values['bare_broadcast']:.2f}x "
              f"(the part of the push no transport removes)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": args.size, "bytes": nbytes, "zero_stage": args.zero_stage, "bucket_mb": args.bucket_mb,
            "seconds": results, "median": median, "best": best, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
