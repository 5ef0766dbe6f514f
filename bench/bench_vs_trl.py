"""rlhf_workers against TRL's GRPOTrainer, in one run, on the same tiny task.

Same tiny random-init Llama (byte tokenizer), same prompts and reward function (the
quickstart's: fraction of response characters that are the target letter), same number of
prompts × samples per prompt × completion tokens, same learning rate and schedule, GRPO
advantages (group mean/std) with no KL, one optimizer step per rollout. Prints seconds per
step (median after warm-up) for TRL and for our runtime in each placement and rollout
backend, the ratio, our per-phase breakdown, generation tokens/s, and the reward reached
after the same number of steps.

    pip install trl==1.16.0        # TRL 1.16 runs GRPO on CPU without vLLM
    python bench/bench_vs_trl.py   # ~5 minutes on 2 cores

Use --configs to pick runs, --json FILE to keep the numbers.
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
QUICKSTART = ROOT / "examples" / "quickstart"
CONFIGS = ("trl", "colocated-transformers", "colocated-vllm", "distributed-vllm", "distributed-transformers")

for key, value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)


def load_prompts(limit: int) -> list[dict]:
    rows = [json.loads(line) for line in (QUICKSTART / "prompts.jsonl").read_text().splitlines()]
    return rows[:limit]


def median_after(values: list[float], warmup: int) -> float:
    rest = values[warmup:] or values
    return statistics.median(rest)


# --------------------------------------------------------------------------- TRL


def run_trl(model_dir: Path, work: Path, a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_workers.reward import load_reward_function

    torch.set_num_threads(a.threads)
    reward_func = load_reward_function(QUICKSTART / "reward_func.py")

    def reward(prompts, completions, target, **_):
        out = reward_func([p + c for p, c in zip(prompts, completions)], list(prompts), list(target))
        return out["rewards"].tolist()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    clock = StepClock()
    config = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=a.prompts * a.samples, num_generations=a.samples,
        max_completion_length=a.tokens, max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, adam_beta2=0.95, max_grad_norm=1.0,
        beta=0.0, num_iterations=1, temperature=1.0, top_p=1.0, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, logging_steps=1, report_to=[], save_strategy="no",
        disable_tqdm=True, seed=a.seed, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=reward, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(load_prompts(64) * 100), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # no per-step dicts on stdout
    trainer.train()
    steps = [b - a_ for a_, b in zip(clock.ends, clock.ends[1:])]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"seconds_per_step": median_after(steps, a.warmup), "rewards": rewards, "steps": len(steps)}


# --------------------------------------------------------------------------- ours


def run_ours(model_dir: Path, work: Path, a, placement: str, backend: str) -> dict:
    import yaml

    from rlhf_workers.local import QuietReporter, prepare_local_config
    from rlhf_workers.train import train

    name = f"{placement}-{backend}"
    spec = {
        "model": {"path": str(model_dir)},
        "data": {"prompts": str(QUICKSTART / "prompts.jsonl"), "inputKey": "prompt", "labelKey": "target"},
        "reward": {"function": {"path": str(QUICKSTART / "reward_func.py")}},
        "algorithm": {"advantageEstimator": "group_norm", "nSamplesPerPrompt": a.samples},
        "rollout": {"backend": backend, "maxNewTokens": a.tokens, "promptMaxLen": 64},
        "training": {"maxSteps": a.steps, "episodes": 100, "rolloutBatchSize": a.prompts,
                     "trainBatchSize": a.prompts * a.samples, "microBatchSize": a.prompts * a.samples,
                     "learningRate": a.lr, "warmupRatio": 0.0, "zeroStage": 2, "trainers": 1, "bf16": False,
                     "seed": a.seed},
        "cluster": {"placement": placement},
    }
    job = work / f"{name}.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name},
                                   "spec": spec}))
    config = prepare_local_config(str(job), str(work / name))
    result = train(config, reporter=QuietReporter(), threads=a.threads)
    rows = result.history
    phases = {k[len("time/"):]: median_after([r.get(k, 0.0) for r in rows], a.warmup)
              for k in ("time/generate", "time/reward", "time/logprobs", "time/advantages", "time/update",
                        "time/weight_sync", "time/step")}
    return {"seconds_per_step": phases["step"], "phases": phases, "rewards": [r["reward/mean"] for r in rows],
            "tokens_per_second": median_after([r["tokens_per_second"] for r in rows], a.warmup), "steps": len(rows)}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--configs", default=",".join(CONFIGS[:4]), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}")

    from rlhf_workers.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    model_dir = make_tiny_model(work / "model", seed=0)
    results: dict[str, dict] = {}
    ours = [c for c in configs if c != "trl"]
    if "trl" in configs:
        print(f"TRL GRPOTrainer: {a.steps} steps ...", file=sys.stderr, flush=True)
        results["trl"] = run_trl(model_dir, work, a)
    if ours:
        import ray

        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        try:
            for c in ours:
                placement, backend = c.split("-")
                print(f"rlhf_workers {placement} {backend}: {a.steps} steps ...", file=sys.stderr, flush=True)
                results[c] = run_ours(model_dir, work, a, placement, backend)
        finally:
            ray.shutdown()

    k = min(5, a.steps)
    print(f"\n{a.prompts} prompts × {a.samples} samples × {a.tokens} tokens, {a.steps} steps, tiny Llama "
          f"(hidden 64, 2 layers), {a.threads} threads; medians after {a.warmup} warm-up steps\n")
    header = f"{'run':<26}{'s/step':>8}{'vs TRL':>8}{'gen tok/s':>11}{'reward first5':>15}{'reward last5':>14}"
    print(header)
    print("-" * len(header))
    trl_time = results.get("trl", {}).get("seconds_per_step")
    for c, r in results.items():
        ratio = f"{r['seconds_per_step'] / trl_time:.2f}x" if trl_time else "-"
        tps = f"{r['tokens_per_second']:.0f}" if "tokens_per_second" in r else "-"
        first = statistics.mean(r["rewards"][:k]) if r["rewards"] else float("nan")
        last = statistics.mean(r["rewards"][-k:]) if r["rewards"] else float("nan")
        print(f"{c:<26}{r['seconds_per_step']:>8.3f}{ratio:>8}{tps:>11}{first:>15.3f}{last:>14.3f}")
    phased = {c: r["phases"] for c, r in results.items() if "phases" in r}
    if phased:
        names = ["generate", "reward", "logprobs", "advantages", "update", "weight_sync", "step"]
        print(f"\nper-phase medians (s): {'':<2}" + "".join(f"{n:>12}" for n in names))
        for c, ph in phased.items():
            print(f"{c:<24}" + "".join(f"{ph[n]:>12.4f}" for n in names))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
