"""Asynchronous against synchronous training in the distributed placement, in one run.

The issue's goal (issue 14, "Benchmarks at a size where choices show"): with
``algorithm.async.enabled`` the same number of steps runs at least 1.3x faster than without it
on 2 cores, with the reward still rising.

The same job runs twice (then again, alternating, ``--rounds`` times): the quickstart task
(reward = share of the target letter in the response) on a random-init Llama, one vLLM engine
and one DeepSpeed trainer in separate processes, weights pushed over the collective (gloo on
CPUs); once synchronous, once with ``algorithm.async`` (``maxStaleness`` 1). Both get the same
torch threads per worker (``--threads``), so the comparison is about overlap, not thread counts.
Reported: the median seconds per step after ``--warmup`` steps, the whole run's wall time, the
speed-up, the mean reward of the first and last three steps, and async's own metrics.

    python bench/async_vs_sync.py                   # tiny model, 12 steps each, ~3 minutes on 2 cores
    python bench/async_vs_sync.py --size larger     # ~25M parameters, head_dim 64, 128 new tokens
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for key, value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)

SIZES = {
    "tiny": (dict(), 32),
    "larger": (dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8, intermediate_size=2048), 128),
}
GOAL = 1.3


def job_spec(model: Path, asynchronous: bool, steps: int, new_tokens: int, lr: float) -> dict:
    quickstart = ROOT / "examples" / "quickstart"
    return {
        "model": {"path": str(model)},
        "data": {"prompts": str(quickstart / "prompts.jsonl"), "inputKey": "prompt", "labelKey": "target"},
        "reward": {"function": {"path": str(quickstart / "reward_func.py")}},
        "algorithm": {"advantageEstimator": "group_norm", "nSamplesPerPrompt": 4,
                      "async": {"enabled": asynchronous, "maxStaleness": 1}},
        "rollout": {"backend": "vllm", "maxNewTokens": new_tokens, "promptMaxLen": 64},
        "training": {"maxSteps": steps, "episodes": 100, "rolloutBatchSize": 8, "trainBatchSize": 32,
                     "microBatchSize": 16, "learningRate": lr, "warmupRatio": 0.0, "zeroStage": 2, "bf16": False},
        "checkpoint": {"saveSteps": -1},
        "cluster": {"placement": "distributed"},
    }


def run_once(model: Path, out: Path, asynchronous: bool, args, new_tokens: int) -> dict:
    from rlhf_api.workerconfig import WorkerConfig
    from rlhf_api.spec import RLHFJobSpec
    from rlhf_workers.local import QuietReporter
    from rlhf_workers.train import train

    spec = RLHFJobSpec.model_validate(job_spec(model, asynchronous, args.steps, new_tokens, args.lr))
    config = WorkerConfig(spec=spec, output_dir=str(out), job_name="bench", progress_port=0,
                          reward_code_path=spec.reward.function.path)
    start = time.perf_counter()
    result = train(config, reporter=QuietReporter(), threads=args.threads)
    wall = time.perf_counter() - start
    rows = result.history
    return {"s_per_step": statistics.median(r["time/step"] for r in rows[args.warmup:]), "wall": wall,
            "reward_first": statistics.mean(r["reward/mean"] for r in rows[:3]),
            "reward_last": statistics.mean(r["reward/mean"] for r in rows[-3:]),
            "async": {k: statistics.median(r[k] for r in rows[args.warmup:])
                      for k in rows[-1] if k.startswith("async/")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="sync/async pairs, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker, both modes")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate, both modes")
    args = parser.parse_args(argv)

    import ray

    from rlhf_workers.tiny import make_tiny_model

    shape, new_tokens = SIZES[args.size]
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict]] = {"sync": [], "async": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = make_tiny_model(Path(tmp) / "model", **shape)
            for k in range(args.rounds):
                for name in ("sync", "async"):
                    out = Path(tmp) / f"{name}-{k}"
                    results[name].append(run_once(model, out, name == "async", args, new_tokens))
                    r = results[name][-1]
                    print(f"{name:<6} {r['s_per_step']:.3f} s/step  run {r['wall']:.1f} s  reward "
                          f"{r['reward_first']:.3f} -> {r['reward_last']:.3f}  {r['async'] or ''}", flush=True)
    finally:
        ray.shutdown()
    sync = statistics.median(r["s_per_step"] for r in results["sync"])
    asyn = statistics.median(r["s_per_step"] for r in results["async"])
    rising = all(r["reward_last"] > r["reward_first"] for r in results["async"])
    speedup = sync / asyn
    print(f"\nsync {sync:.3f} s/step, async {asyn:.3f} s/step: speed-up {speedup:.2f}x "
          f"(goal >= {GOAL}x: {'met' if speedup >= GOAL else 'NOT met'}); async reward rising: {rising}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
