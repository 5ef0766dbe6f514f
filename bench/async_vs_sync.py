"""Asynchronous against synchronous training in the distributed placement, in one run.

The issue's goal (issue 14, "Benchmarks at a size where choices show"): with
``algorithm.async.enabled`` the same number of steps runs at least 1.3x faster than without it
on 2 cores, with the reward still rising.

The same job runs once per ``--modes`` entry (then again, alternating, ``--rounds`` times): the
quickstart task (reward = share of the target letter in the response) on a random-init Llama,
one vLLM engine and one DeepSpeed trainer in separate processes, weights pushed over the
collective (gloo on CPUs); synchronous or with ``algorithm.async`` (``maxStaleness`` 1), each
with its own torch threads per worker (``sync:2``: two threads each, which is what ``rlhf run``
gives a synchronous job on 2 cores, since its engine and trainer never compute at once;
``async:1``: one each, what it gives an asynchronous one).

Per run: the median seconds per step after ``--warmup`` steps and each phase's median, the
reward per step and the mean of the first and last five, async's own metrics, and where the
CPU went during the steady steps (:class:`CpuMeter`: this run's engine, trainer, driver and the
rest of Ray, and ``other``: everything else on the machine, i.e. other people's work on a shared
one). Then each async mode's speed-up over each sync mode, and, from a sync run's CPU seconds per
step, the best any overlap of engine and trainer could do on free cores.

    python bench/async_vs_sync.py                   # tiny model, 12 steps each, ~3 minutes on 2 cores
    python bench/async_vs_sync.py --size larger --steps 10 --warmup 2 --lr 1e-3 \
        --modes sync:1,async:1,sync:2            # ~25M parameters, head_dim 64, 128 new tokens
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

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


class CpuMeter:
    """Where the machine's CPU went during a run's steady steps: the whole machine (``/proc/stat``)
    and this run's own processes (this one and every process under it: Ray's workers), sampled
    twice a second, counted from when ``metrics`` holds ``after`` rows (start-up and warm-up left out).

    The workers are told apart by the method Ray names in their process title while it runs
    (``ray::RoleWorker.generate``: the engine; ``.train``: the trainer). ``other`` is the rest
    of the machine: other people's work on a shared machine.
    """

    def __init__(self, metrics: Path, after: int):
        import psutil

        self._metrics, self._after = metrics, after
        self._base: Optional[dict[int, float]] = None

        self._psutil, self._me = psutil, psutil.Process()
        self._cpu: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _jiffies() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def _sample(self) -> None:
        for proc in [self._me] + self._me.children(recursive=True):
            try:
                with proc.oneshot():
                    times, title = proc.cpu_times(), " ".join(proc.cmdline()[:1])
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            self._cpu[proc.pid] = max(self._cpu.get(proc.pid, 0.0), times.user + times.system)
            if proc.pid == self._me.pid:
                self._role[proc.pid] = "driver"
            elif ".generate" in title:
                self._role[proc.pid] = "engine"
            elif ".train" in title or "logprobs" in title or "broadcast" in title:
                self._role[proc.pid] = "trainer"
            else:
                self._role.setdefault(proc.pid, "ray+reward")

    def _mark(self) -> None:
        self._start, self._wall = self._jiffies(), time.perf_counter()
        self._sample()
        self._base = dict(self._cpu)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self._base is None and self._metrics.is_file() and \
                    len(self._metrics.read_text().splitlines()) >= self._after:
                self._mark()
            else:
                self._sample()

    def __enter__(self) -> "CpuMeter":
        self._mark()  # replaced when the warm-up steps are done
        self._first, self._base = self._base, None
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._base = self._base if self._base is not None else self._first  # a run shorter than its warm-up
        total, idle = (a - b for a, b in zip(self._jiffies(), self._start))
        cores = os.cpu_count() or 1
        wall = time.perf_counter() - self._wall
        self.machine_busy = (total - idle) / max(total, 1) * cores  # cores busy on average
        ours: dict[str, float] = {}
        for pid, seconds in self._cpu.items():
            role = self._role.get(pid, "ray+reward")
            ours[role] = ours.get(role, 0.0) + seconds - self._base.get(pid, 0.0)
        self.wall = wall
        self.cores = {role: seconds / wall for role, seconds in sorted(ours.items())}  # cores used on average
        self.cores["other"] = max(0.0, self.machine_busy - sum(self.cores.values()))


def run_once(model: Path, out: Path, asynchronous: bool, args, new_tokens: int, threads: int) -> dict:
    from rlhf_api.workerconfig import WorkerConfig
    from rlhf_api.spec import RLHFJobSpec
    from rlhf_workers.local import QuietReporter
    from rlhf_workers.train import train

    spec = RLHFJobSpec.model_validate(job_spec(model, asynchronous, args.steps, new_tokens, args.lr))
    config = WorkerConfig(spec=spec, output_dir=str(out), job_name="bench", progress_port=0,
                          reward_code_path=spec.reward.function.path)
    start = time.perf_counter()
    with CpuMeter(out / "metrics.jsonl", args.warmup) as cpu:
        result = train(config, reporter=QuietReporter(), threads=threads)
    wall = time.perf_counter() - start
    rows = result.history
    steady = rows[args.warmup:]
    k = max(1, min(5, len(rows) // 2))  # the first and last five steps (fewer in a short run)
    return {"s_per_step": statistics.median(r["time/step"] for r in steady), "wall": wall,
            "reward_first": statistics.mean(r["reward/mean"] for r in rows[:k]),
            "reward_last": statistics.mean(r["reward/mean"] for r in rows[-k:]),
            "rewards": [round(r["reward/mean"], 3) for r in rows], "cores": cpu.cores,
            "cpu_per_step": {role: cores * cpu.wall / len(steady) for role, cores in cpu.cores.items() if role != "other"},
            "phases": {key[5:]: statistics.median(r.get(key, 0.0) for r in steady)
                       for key in sorted(rows[-1]) if key.startswith("time/") and key != "time/step"},
            "async": {key: statistics.median(r[key] for r in steady)
                      for key in sorted(rows[-1]) if key.startswith("async/")}}


def report(label: str, r: dict) -> None:
    phases = " ".join(f"{key} {value:.2f}" for key, value in r["phases"].items())
    print(f"{label:<8} {r['s_per_step']:.3f} s/step  run {r['wall']:.1f} s  reward "
          f"{r['reward_first']:.3f} -> {r['reward_last']:.3f}\n         phases (s, median): {phases}"
          f"\n         rewards per step: {r['rewards']}"
          "\n         cores busy (mean over the run): " + " ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())
          + "\n         CPU s per step: " + " ".join(f"{k} {v:.2f}" for k, v in r["cpu_per_step"].items()), flush=True)
    if r["async"]:
        print("         " + " ".join(f"{key[6:]} {value:.3g}" for key, value in r["async"].items()), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --modes, alternating")
    parser.add_argument("--modes", default="sync:1,async:1",
                        help="runs per round, in order: sync or async, each with its torch threads per worker. "
                             "sync:2 is what `rlhf run` gives a synchronous job on 2 cores (engine and trainer "
                             "never run at once), async:1 what it gives an asynchronous one")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate, every run")
    args = parser.parse_args(argv)
    modes = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else 1) for m in args.modes.split(",")]
    if any(name not in ("sync", "async") for name, _ in modes):
        parser.error(f"--modes: each entry is sync[:THREADS] or async[:THREADS], got {args.modes!r}")

    import ray

    from rlhf_workers.tiny import make_tiny_model

    shape, new_tokens = SIZES[args.size]
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict]] = {f"{name}:{threads}": [] for name, threads in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = make_tiny_model(Path(tmp) / "model", **shape)
            for k in range(args.rounds):
                for name, threads in modes:
                    label = f"{name}:{threads}"
                    results[label].append(run_once(model, Path(tmp) / f"{name}-{threads}-{k}", name == "async",
                                                   args, new_tokens, threads))
                    report(label, results[label][-1])
    finally:
        ray.shutdown()
    median = {label: statistics.median(r["s_per_step"] for r in rs) for label, rs in results.items()}
    print()
    for label, rs in results.items():
        print(f"{label:<8} median {median[label]:.3f} s/step over {len(rs)} run(s); reward first 5 -> last 5: "
              + ", ".join(f"{r['reward_first']:.3f} -> {r['reward_last']:.3f}" for r in rs))
    for sync in (label for label in results if label.startswith("sync")):
        for asyn in (label for label in results if label.startswith("async")):
            speedup = median[sync] / median[asyn]
            rising = all(r["reward_last"] > r["reward_first"] for r in results[asyn])
            print(f"{asyn} against {sync}: speed-up {speedup:.2f}x (goal >= {GOAL}x: "
                  f"{'met' if speedup >= GOAL else 'NOT met'}); async reward rising: {rising}")
        cpu = statistics.median(r["cpu_per_step"].get("engine", 0) for r in results[sync]), \
            statistics.median(r["cpu_per_step"].get("trainer", 0) for r in results[sync])
        if min(cpu) > 0:
            print(f"{sync}: engine {cpu[0]:.2f} + trainer {cpu[1]:.2f} CPU s/step; overlapping the two on free "
                  f"cores could at best give {sum(cpu) / max(cpu):.2f}x over this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
