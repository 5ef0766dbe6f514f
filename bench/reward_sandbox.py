"""Sandboxed reward pool vs the seed's sequential subprocess reward, on 64 generated programs.

    python bench/reward_sandbox.py            # ~2-4 minutes on 2 cores
    python bench/reward_sandbox.py --programs 128 --timeout 2 --rounds 1

Both sides score the same batch: 64 candidate implementations of ``add(a, b)`` (passing,
failing, crashing, looping) with the same pytest tests, one pytest run per sample, the same
per-run timeout and the same pytest environment (plugin autoload off, for both). The batch has
the shape training gives a reward: ``--samples-per-prompt`` samples (default 8, GRPO's usual
group) of each prompt, prompt-major. The pool never splits a prompt group across calls, so
``--samples-per-prompt 64`` (one prompt for the whole batch) leaves it one call: no parallelism.

* baseline - the seed's code-generation approach: in the reward's own process, for each sample
  in turn, write a temporary file and ``subprocess.run(["python", "-m", "pytest", file], timeout=...)``;
* sandboxed - examples/code-exec/reward_func.py (on :mod:`rlhf_workers.sandbox.run`) scored by
  :class:`~rlhf_workers.reward.SandboxedFunctionReward`: the batch split over ``--parallelism``
  sandboxed processes (default: the cores available), isolation on (rlimits, stripped
  environment, network namespace and Landlock where the kernel allows; the report says which).

Printed: both wall times, their ratio (goal >= 1.8x on 2 cores), that both gave the same
rewards, and the per-call overhead of ``run_command`` over a bare ``subprocess.run`` of the same
trivial program, and of one sandboxed pool call over a direct function call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "code-exec" / "reward_func.py"
TESTS = "def test_add():\n    assert add(2, 3) == 5\n\ndef test_add_negative():\n    assert add(-1, 1) == 0\n"
KINDS = {
    "passing": "def add(a, b):\n    return a + b\n",
    "failing": "def add(a, b):\n    return a - b\n",
    "crashing": "def add(a, b) return a + b\n",
    "looping": "while True:\n    pass\n",
}
MIX = ["passing"] * 3 + ["failing"] * 2 + ["crashing"] * 2 + ["looping"]  # 1 in 8 loops until the timeout


def batch(count: int, per_prompt: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(kinds, queries, prompts, labels): ``count`` programs, ``per_prompt`` samples of each prompt."""
    progs = programs(count)
    prompts = [f"Write add(a, b) (task {i // per_prompt}).\n" for i in range(count)]
    return ([kind for kind, _ in progs], [p + src for p, (_, src) in zip(prompts, progs)], prompts,
            [TESTS] * count)


def programs(count: int) -> list[tuple[str, str]]:
    """(kind, source) for ``count`` programs; each carries a distinct comment so none is a copy."""
    return [(MIX[i % len(MIX)], f"# candidate {i}\n" + KINDS[MIX[i % len(MIX)]]) for i in range(count)]


def seed_reward(queries, prompts, labels, timeout: float) -> list[float]:
    """The seed's approach, sequential, in this process: a temp file and subprocess.run per sample."""
    rewards = []
    for query, prompt, tests in zip(queries, prompts, labels):
        code = query[len(prompt):].strip()
        with tempfile.NamedTemporaryFile("w", suffix="_test.py", delete=False) as f:
            f.write(code + "\n\n" + tests)
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f.name],
                                 capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(f.name))
            summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
            rewards.append(-1.0 if "error" in summary else 0.3 if "failed" in summary else
                           1.0 if "passed" in summary else 0.0)
        except subprocess.TimeoutExpired:
            rewards.append(-0.5)
        finally:
            os.unlink(f.name)
    return rewards


def overheads(calls: int) -> dict[str, float]:
    """Median seconds per call: bare subprocess.run vs run_command; a direct call vs a pool call."""
    from rlhf_workers.sandbox import SandboxPool
    from rlhf_workers.sandbox.run import run_command

    argv = [sys.executable, "-S", "-c", "pass"]

    def medians(*fns) -> list[float]:
        """Median seconds of each, the calls interleaved so that a change in the machine's load hits all alike."""
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(calls):
            for fn, kept in zip(fns, times):
                start = time.perf_counter()
                fn()
                kept.append(time.perf_counter() - start)
        return [statistics.median(kept) for kept in times]

    def median(fn) -> float:
        return medians(fn)[0]

    out = dict(zip(("bare subprocess.run", "sandbox run_command"),
                   medians(lambda: subprocess.run(argv, capture_output=True, timeout=30),
                           lambda: run_command(argv, timeout=30))))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "noop.py"
        path.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n")
        namespace: dict = {}
        exec(path.read_text(), namespace)
        out["direct reward call"] = median(lambda: namespace["reward_func"](["q"], ["p"], [""]))
        with SandboxPool({"kind": "reward_func", "path": str(path)}, size=1, timeout=30) as pool:
            out["sandboxed pool call"] = median(lambda: pool.map([(["q"], ["p"], [""])]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--samples-per-prompt", type=int, default=8,
                        help="samples of each prompt (a group is never split across calls)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per pytest run (both sides)")
    parser.add_argument("--parallelism", type=int, default=None, help="sandboxed processes (default: cores)")
    parser.add_argument("--calls", type=int, default=30, help="calls per overhead measurement")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both sides, in A B B A order")
    args = parser.parse_args()
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the same plain pytest on both sides

    from rlhf_workers.reward import SandboxedFunctionReward
    from rlhf_workers.sandbox import Limits, available_cores

    kinds, queries, prompts, labels = batch(args.programs, args.samples_per_prompt)
    counts = {k: kinds.count(k) for k in KINDS}
    cores = available_cores()
    print(f"{len(kinds)} programs {counts}, {args.samples_per_prompt} per prompt; timeout {args.timeout:g}s per run; "
          f"{cores} cores available; load average {os.getloadavg()[0]:.1f}")

    example = EXAMPLE.read_text().replace("TIMEOUT_S = 5", f"TIMEOUT_S = {args.timeout!r}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "reward_func.py"
        path.write_text(example)
        start = time.perf_counter()
        reward = SandboxedFunctionReward(str(path), parallelism=args.parallelism, timeout=args.timeout * 40 + 60,
                                         limits=Limits(memory_mb=4096))
        start_s = time.perf_counter() - start
        print(f"sandbox: {reward.report}")
        seed_s = pool_s = 0.0
        differ: list[str] = []
        try:  # rounds in A B B A order, so a change in the machine's load hits both sides alike
            for k in range(args.rounds):
                for side in ("seed", "pool") if k % 2 == 0 else ("pool", "seed"):
                    start = time.perf_counter()
                    if side == "seed":
                        baseline = seed_reward(queries, prompts, labels, args.timeout)
                        seed_s += time.perf_counter() - start
                    else:
                        result = reward.score(queries, prompts, labels)
                        pool_s += time.perf_counter() - start
                differ += [f"#{i} {kinds[i]}: seed {b:g}, pool {p:g}" for i, (b, p) in
                           enumerate(zip(baseline, result.rewards.tolist())) if round(b, 4) != round(p, 4)]
        finally:
            reward.close()
    same = not differ
    print(f"seed, sequential subprocess.run : {seed_s:7.2f} s  ({args.rounds} round(s))")
    print(f"sandboxed pool ({reward.pool.size} processes)    : {pool_s:7.2f} s  (+ {start_s:.2f} s to start the pool once)")
    print(f"speed-up                        : {seed_s / pool_s:7.2f}x   (goal >= 1.8x on 2 cores); "
          f"same rewards: {same}; faults: {len(result.faults)}")
    if differ:  # a pytest run past the timeout on one side only (a loaded machine) shows up here
        print(f"rewards that differ ({len(differ)}): " + "; ".join(differ[:10]))
    costs = overheads(args.calls)
    bare, sandboxed = costs["bare subprocess.run"], costs["sandbox run_command"]
    direct, pooled = costs["direct reward call"], costs["sandboxed pool call"]
    print(f"per run  : bare subprocess.run {bare * 1e3:.1f} ms, run_command {sandboxed * 1e3:.1f} ms "
          f"-> sandbox overhead {(sandboxed - bare) * 1e3:+.1f} ms ({sandboxed / bare:.2f}x)")
    print(f"per call : direct reward_func {direct * 1e6:.0f} us, sandboxed pool call {pooled * 1e3:.2f} ms "
          f"-> overhead {(pooled - direct) * 1e3:+.2f} ms")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
