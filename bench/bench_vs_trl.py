"""rlhf_workers against TRL's GRPOTrainer, in one run, on the same task.

Same random-init Llama (byte tokenizer), same prompts and reward function (the quickstart's:
fraction of response characters that are the target letter), same number of prompts × samples
per prompt × completion tokens, same learning rate and schedule, GRPO advantages (group
mean/std) with no KL, one optimizer step per rollout. Prints seconds per step (median after
warm-up) for TRL and for our runtime in each placement and rollout backend, the ratio, our
per-phase breakdown, generation tokens/s, and the reward reached after the same number of steps.

Two model sizes (bench/bench_models.py): ``tiny`` (the quickstart's ~107k-parameter model,
32 tokens) and ``small`` (~25M parameters, head_dim 64, 128 tokens), where vLLM's fixed
per-step cost no longer hides the model.

--learning adds a learning-efficiency comparison on the quickstart task (its model, batch and
16-token answers): each side trains with every learning rate of --lrs, keeps its best, and the
seconds each needs to reach a mean reward of --threshold are compared. --async adds our
distributed placement with algorithm.async on against off, same steps, at --size.

    pip install trl==1.16.0                 # TRL 1.16 runs GRPO on CPU without vLLM
    python bench/bench_vs_trl.py --quick    # ~2 minutes on 2 cores
    python bench/bench_vs_trl.py --full     # small model, every config, --learning, --async

Use --configs to pick runs, --json FILE to keep the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import SIZES, describe, make_bench_model, parameter_count  # noqa: E402
from bench_runs import load_quickstart, run_ours, run_trl, time_to_threshold  # noqa: E402

CONFIGS = ("trl", "colocated-transformers", "colocated-vllm", "distributed-vllm", "distributed-transformers")
SIZE_DEFAULTS = {"tiny": {"steps": 30, "warmup": 5, "tokens": 32}, "small": {"steps": 10, "warmup": 3, "tokens": 128}}

# Both sides get the same CPU treatment: OpenMP threads that sleep instead of spinning (what our workers
# get from rlhf_workers.cluster.WORKER_ENV; TRL runs in this process, whose torch is not imported yet), and
# Ray workers at this process's priority (Ray's default nices them to 15, which on a shared machine hands
# TRL, at nice 0, the cores).
for key, value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "WANDB_MODE": "disabled",
                   "OMP_WAIT_POLICY": "PASSIVE", "RAY_worker_niceness": str(os.nice(0))}.items():
    os.environ.setdefault(key, value)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model size for the s/step table")
    p.add_argument("--steps", type=int, help="steps per run (default: 30 tiny, 10 small)")
    p.add_argument("--warmup", type=int, help="steps left out of the medians (default: 5 tiny, 3 small)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, help="completion tokens (default: 32 tiny, 128 small)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--configs", default=",".join(CONFIGS[:4]), help=f"comma-separated, from {', '.join(CONFIGS)}; "
                   "'none' for only --learning/--async")
    p.add_argument("--learning", action="store_true", help="add the learning-efficiency comparison")
    p.add_argument("--lrs", default="1e-2,3e-2,1e-1", help="learning rates each side tries in --learning")
    p.add_argument("--threshold", type=float, default=0.5, help="mean reward (3-step rolling mean) to reach")
    p.add_argument("--learning-steps", type=int, help="step cap per --learning run (default: the quickstart's maxSteps)")
    p.add_argument("--learning-config", default="colocated-vllm", choices=CONFIGS[1:], help="our side in --learning")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="add distributed vLLM with algorithm.async on vs off at --size")
    p.add_argument("--quick", action="store_true", help="tiny model, 12 steps, trl and colocated-vllm only")
    p.add_argument("--full", action="store_true", help="small model, every config, --learning and --async")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.quick and a.full:
        p.error("--quick and --full contradict each other: pick one")
    if a.full:
        a.size, a.configs, a.learning, a.async_ = "small", ",".join(CONFIGS), True, True
    if a.quick:
        a.size, a.configs, a.steps, a.warmup = "tiny", "trl,colocated-vllm", a.steps or 12, 3 if a.warmup is None else a.warmup
    for name, value in SIZE_DEFAULTS[a.size].items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    a.config_list = [] if a.configs.strip() == "none" else [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in a.config_list:
        if c not in CONFIGS:
            p.error(f"--configs: unknown config {c!r}; pick from {', '.join(CONFIGS)}")
    try:
        a.lr_list = [float(x) for x in a.lrs.split(",") if x.strip()]
    except ValueError:
        p.error(f"--lrs: {a.lrs!r} is not a comma-separated list of numbers (e.g. 1e-2,3e-2,1e-1)")
    if a.warmup >= a.steps:
        p.error(f"--warmup {a.warmup} leaves no step of --steps {a.steps} to time: lower --warmup or raise --steps")
    return a


def with_(a: argparse.Namespace, **over) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(a), **over})


def mean_of(values: list[float], first: bool) -> float:
    """Mean of the first or last 5 values (fewer in a short run: never overlapping halves)."""
    k = max(1, min(5, len(values) // 2))
    part = values[:k] if first else values[-k:]
    return statistics.mean(part) if part else float("nan")


# --------------------------------------------------------------------------- the runs


def done(label: str, r: dict) -> None:
    """One line per finished run as it finishes (stderr), so a long run that is cut short keeps its numbers."""
    print(f"  {label}: {r['seconds_per_step']:.3f} s/step (median), steps {[round(s, 2) for s in r['step_seconds']]}, "
          f"rewards {[round(x, 3) for x in r['rewards']]}", file=sys.stderr, flush=True)


def speed_runs(a, model_dir: Path, work: Path, results: dict) -> None:
    for c in a.config_list:
        print(f"{c}: {a.steps} steps at size {a.size} ...", file=sys.stderr, flush=True)
        if c == "trl":
            results[c] = run_trl(model_dir, work, a)
        else:
            placement, backend = c.split("-")
            results[c] = run_ours(model_dir, work, a, placement, backend)
        done(c, results[c])


def learning_runs(a, work: Path) -> dict:
    """Each side with each learning rate on the quickstart task; the best is the fastest to the threshold."""
    quick = load_quickstart()
    model_dir = make_bench_model(work / "model-tiny", "tiny", seed=0)
    steps = a.learning_steps or quick["steps"]
    base = with_(a, size="tiny", steps=steps, warmup=0, tokens=quick["tokens"], prompts=quick["prompts"],
                 samples=quick["samples"])
    placement, backend = a.learning_config.split("-")
    out: dict = {"threshold": a.threshold, "steps": steps, "ours": a.learning_config, "runs": {"trl": {}, "ours": {}}}
    for i, lr in enumerate(a.lr_list):
        for side in ("trl", "ours"):
            print(f"learning: {side} lr={lr:g}, up to {steps} steps ...", file=sys.stderr, flush=True)
            r = run_trl(model_dir, work, with_(base, lr=lr)) if side == "trl" else \
                run_ours(model_dir, work, with_(base, lr=lr), placement, backend, name=f"learn-{i}")  # a DNS label: no dots
            r["time_to_threshold"], r["step_reached"] = time_to_threshold(r["step_seconds"], r["rewards"], a.threshold)
            done(f"learning {side} lr={lr:g}", r)
            out["runs"][side][lr] = r
    for side in ("trl", "ours"):
        runs = out["runs"][side]
        out[f"best_{side}"] = min(runs, key=lambda lr: (runs[lr]["time_to_threshold"] is None,
                                                       runs[lr]["time_to_threshold"] or 0.0,
                                                       -mean_of(runs[lr]["rewards"], first=False)))
    return out


def async_runs(a, model_dir: Path, work: Path) -> dict:
    out = {}
    for mode in ("sync", "async"):
        print(f"distributed vLLM, {mode}: {a.steps} steps at size {a.size} ...", file=sys.stderr, flush=True)
        out[mode] = run_ours(model_dir, work, a, "distributed", "vllm", name=f"distributed-{mode}",
                             async_=(mode == "async"))
        done(f"distributed-vllm {mode}", out[mode])
    return out


# --------------------------------------------------------------------------- report


def print_speed(a, results: dict, params: int) -> None:
    print(f"\n{a.prompts} prompts × {a.samples} samples × {a.tokens} tokens, {a.steps} steps, {describe(a.size)}, "
          f"{params / 1e6:.2f}M parameters, {a.threads} threads; medians after {a.warmup} warm-up steps; reward first/last: "
          "mean over the first/last 5 steps (fewer in short runs)\n")
    header = f"{'run':<26}{'s/step':>8}{'vs TRL':>8}{'gen tok/s':>11}{'reward first':>14}{'reward last':>13}"
    print(header)
    print("-" * len(header))
    trl_time = results.get("trl", {}).get("seconds_per_step")
    for c, r in results.items():
        ratio = f"{r['seconds_per_step'] / trl_time:.2f}x" if trl_time else "-"
        tps = f"{r['tokens_per_second']:.0f}" if "tokens_per_second" in r else "-"
        print(f"{c:<26}{r['seconds_per_step']:>8.3f}{ratio:>8}{tps:>11}"
              f"{mean_of(r['rewards'], True):>14.3f}{mean_of(r['rewards'], False):>13.3f}")
    print_phases(results)


def print_phases(results: dict) -> None:
    phased = {c: r["phases"] for c, r in results.items() if "phases" in r}
    if phased:
        names = ["generate", "reward", "logprobs", "advantages", "update", "weight_sync", "step"]
        print(f"\nper-phase medians (s): {'':<2}" + "".join(f"{n:>12}" for n in names))
        for c, ph in phased.items():
            print(f"{c:<24}" + "".join(f"{ph[n]:>12.4f}" for n in names))


def print_learning(lrn: dict) -> None:
    print(f"\nlearning efficiency (quickstart task): seconds of training until the 3-step mean reward reaches "
          f"{lrn['threshold']}, cap {lrn['steps']} steps; ours = {lrn['ours']}\n")
    print(f"{'side':<8}{'lr':>8}{'s to threshold':>16}{'w/o step 1':>12}{'at step':>9}{'s/step':>8}{'reward last':>13}")
    for side in ("trl", "ours"):
        for lr, r in lrn["runs"][side].items():
            reached = r["time_to_threshold"] is not None
            ttt = f"{r['time_to_threshold']:.1f}" if reached else "not reached"
            later = f"{r['time_to_threshold'] - r['step_seconds'][0]:.1f}" if reached else "-"  # first step: warm-up
            best = " *" if lr == lrn[f"best_{side}"] else ""
            print(f"{side:<8}{lr:>8g}{ttt:>16}{later:>12}{str(r['step_reached'] or '-'):>9}"
                  f"{r['seconds_per_step']:>8.3f}{mean_of(r['rewards'], False):>13.3f}{best}")
    print("(* = the side's best learning rate)")


def print_async(a, runs: dict) -> None:
    print(f"\nasync vs sync, distributed vLLM, size {a.size}, {a.steps} steps (medians after {a.warmup})\n")
    for mode, r in runs.items():
        extra = f"  staleness mean {r['async'].get('async/staleness_mean', 0):.2f}, dropped {r['async'].get('async/dropped', 0):g}" \
            if r.get("async") else ""
        print(f"{mode:<6} {r['seconds_per_step']:.3f} s/step, reward {mean_of(r['rewards'], True):.3f} -> "
              f"{mean_of(r['rewards'], False):.3f}{extra}")


def goals(a, results: dict, lrn: dict | None, asy: dict | None) -> list[str]:
    """Issue 14's goals, each met or not, from this run's numbers."""
    lines = []
    trl, colo = results.get("trl"), results.get("colocated-vllm")
    if trl and colo:
        ratio = colo["seconds_per_step"] / trl["seconds_per_step"]
        scope = "" if a.size == "small" else f" (measured at size {a.size}; the goal is for size small)"
        lines.append(f"colocated vLLM s/step <= 1.0x TRL's: {ratio:.2f}x -> {'met' if ratio <= 1.0 else 'NOT met'}{scope}")
    if lrn:
        ours, theirs = lrn["runs"]["ours"][lrn["best_ours"]], lrn["runs"]["trl"][lrn["best_trl"]]
        if ours["time_to_threshold"] is None:
            lines.append("time to threshold <= TRL's: ours never reached it -> NOT met")
        elif theirs["time_to_threshold"] is None:
            lines.append(f"time to threshold <= TRL's: ours {ours['time_to_threshold']:.1f} s, TRL not within "
                         f"{lrn['steps']} steps ({sum(theirs['step_seconds']):.1f} s) -> met")
        else:
            ratio = ours["time_to_threshold"] / theirs["time_to_threshold"]
            lines.append(f"time to threshold <= TRL's: {ratio:.2f}x -> {'met' if ratio <= 1.0 else 'NOT met'}")
    if asy:
        speedup = asy["sync"]["seconds_per_step"] / asy["async"]["seconds_per_step"]
        rising = mean_of(asy["async"]["rewards"], False) > mean_of(asy["async"]["rewards"], True)
        ok = speedup >= 1.3 and rising
        lines.append(f"async speed-up >= 1.3x with the reward rising: {speedup:.2f}x, reward "
                     f"{'rising' if rising else 'NOT rising'} -> {'met' if ok else 'NOT met'}")
    return lines


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    a = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    model_dir = make_bench_model(work / f"model-{a.size}", a.size, seed=0)
    params = parameter_count(model_dir)
    results: dict[str, dict] = {}
    lrn = asy = None
    needs_ray = any(c != "trl" for c in a.config_list) or a.async_ or a.learning
    if needs_ray:
        import ray

        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        speed_runs(a, model_dir, work, results)
        if a.async_:
            asy = async_runs(a, model_dir, work)
        if a.learning:
            lrn = learning_runs(a, work)
    finally:
        if needs_ray:
            ray.shutdown()
    if results:
        print_speed(a, results, params)
    if asy:
        print_async(a, asy)
    if lrn:
        print_learning(lrn)
    lines = goals(a, results, lrn, asy)
    if lines:
        print("\nissue 14 goals (this run, this machine):")
        for line in lines:
            print(f"  {line}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items()}, "parameters": params,
                                            "results": results, "learning": lrn, "async": asy, "goals": lines},
                                           indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
