"""One training run of each side of bench_vs_trl.py: TRL's GRPOTrainer, and our runtime through `train`.

Both return ``seconds_per_step`` (median after ``a.warmup`` steps), ``step_seconds`` (every
step), ``rewards`` (mean reward of every step) and ``steps``; ours adds per-phase medians and
generation tokens/s. ``a`` is the benchmark's argument namespace (prompts, samples, tokens,
steps, warmup, lr, seed, threads).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


def load_quickstart() -> dict:
    """The quickstart job's batch shape and step count (examples/quickstart.yaml)."""
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    return {"prompts": spec["training"]["rolloutBatchSize"], "samples": spec["algorithm"]["nSamplesPerPrompt"],
            "tokens": spec["rollout"]["maxNewTokens"], "steps": spec["training"]["maxSteps"]}


def load_prompts(limit: int) -> list[dict]:
    import json

    rows = [json.loads(line) for line in (QUICKSTART / "prompts.jsonl").read_text().splitlines()]
    return rows[:limit]


def median_after(values: list[float], warmup: int) -> float:
    rest = values[warmup:] or values
    return statistics.median(rest)


def time_to_threshold(step_seconds: list[float], rewards: list[float], threshold: float,
                      window: int = 3) -> tuple[Optional[float], Optional[int]]:
    """Training seconds until the rolling mean reward of ``window`` steps first reaches ``threshold``, and that step."""
    for i in range(window - 1, len(rewards)):
        if statistics.mean(rewards[i - window + 1:i + 1]) >= threshold:
            return sum(step_seconds[:i + 1]), i + 1
    return None, None


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
    return {"seconds_per_step": median_after(steps, a.warmup), "step_seconds": steps, "rewards": rewards,
            "steps": len(steps)}


# --------------------------------------------------------------------------- ours


def job_spec(model_dir: Path, a, placement: str, backend: str, async_: bool) -> dict:
    """The RLHFJob spec of our side: the same task, batch and optimiser settings as TRL's."""
    algorithm = {"advantageEstimator": "group_norm", "nSamplesPerPrompt": a.samples}
    if async_:
        algorithm["async"] = {"enabled": True, "maxStaleness": 1}
    return {
        "model": {"path": str(model_dir)},
        "data": {"prompts": str(QUICKSTART / "prompts.jsonl"), "inputKey": "prompt", "labelKey": "target"},
        "reward": {"function": {"path": str(QUICKSTART / "reward_func.py")}},
        "algorithm": algorithm,
        "rollout": {"backend": backend, "maxNewTokens": a.tokens, "promptMaxLen": 64},
        "training": {"maxSteps": a.steps, "episodes": 100, "rolloutBatchSize": a.prompts,
                     "trainBatchSize": a.prompts * a.samples, "microBatchSize": a.prompts * a.samples,
                     "learningRate": a.lr, "warmupRatio": 0.0, "zeroStage": 2, "trainers": 1, "bf16": False,
                     "seed": a.seed},
        "cluster": {"placement": placement},
    }


def run_ours(model_dir: Path, work: Path, a, placement: str, backend: str, *, name: Optional[str] = None,
             async_: bool = False) -> dict:
    from rlhf_workers.local import QuietReporter, prepare_local_config
    from rlhf_workers.train import train

    name = name or f"{placement}-{backend}"
    job = work / f"{name}.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name},
                                   "spec": job_spec(model_dir, a, placement, backend, async_)}))
    config = prepare_local_config(str(job), str(work / name))
    result = train(config, reporter=QuietReporter(), threads=a.threads)
    rows = result.history
    phases = {k[len("time/"):]: median_after([r.get(k, 0.0) for r in rows], a.warmup)
              for k in ("time/generate", "time/reward", "time/logprobs", "time/advantages", "time/update",
                        "time/weight_sync", "time/step")}
    return {"seconds_per_step": phases["step"], "phases": phases, "rewards": [r["reward/mean"] for r in rows],
            "step_seconds": [r.get("time/step", 0.0) for r in rows],
            "tokens_per_second": median_after([r["tokens_per_second"] for r in rows], a.warmup), "steps": len(rows),
            "async": {k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith("async/")}}
