"""Operator scale: N RLHFJobs applied at once to the API emulator.

Reports, for `rlhf operator` and, in the same run, for a bare kopf operator that creates one
ConfigMap per object (bench/bare_operator.py): the time from each job's creation until its
child exists (p50/p99), the time until all exist, and the operator process's peak RSS.

    .venv/bin/python bench/operator_scale.py            # N=500
    .venv/bin/python bench/operator_scale.py -n 1000

Goal: p99 ≤ 2× the bare operator's; peak RSS ≤ 150 MB at 1000 jobs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.emulator import KubeEmulator  # noqa: E402

NS = "bench"
REWARD = "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"


def job(name: str) -> dict:
    return {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"path": "/models/m"}, "data": {"prompts": "/data/p.jsonl"},
                     "reward": {"function": {"inline": REWARD}},
                     "algorithm": {"advantageEstimator": "rloo", "nSamplesPerPrompt": 4}}}


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            self.stop.wait(0.05)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_one(label: str, command: list[str], child_of, resource: str, n: int, timeout: float) -> dict:
    with KubeEmulator(record_requests=False) as kube:
        kube.create_namespace(NS)
        env = {**os.environ, "KUBECONFIG": kube.kubeconfig_path, "RLHF_KUBECONFIG": kube.kubeconfig_path,
               "RLHF_HEALTH_PORT": "0", "RLHF_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        # The operator's log goes to a file: an unread pipe fills up and blocks the process.
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            kube.wait_for(lambda: kube.watch_count("rlhf.dev/v1alpha1/rlhfjobs") > 0, timeout=60)
            idle_rss = sampler.peak
            idle_cpu = _cpu_seconds(proc.pid)
            created: dict[str, float] = {}
            start = time.monotonic()
            for i in range(n):
                name = f"job-{i:05d}"
                kube.create(job(name))
                created[name] = time.monotonic()
            seen: dict[str, float] = {}
            deadline = time.monotonic() + timeout
            next_report = time.monotonic() + 10
            # Read the store's names under its lock: listing (deep-copying) every object each
            # poll would cost the server more CPU than the operators being measured.
            bucket = kube.store._buckets[kube.resource(resource).key]
            while len(seen) < n and time.monotonic() < deadline:
                now = time.monotonic()
                with kube.store.lock:
                    names = [name for ns, name in bucket.objects if ns == NS]
                for name in names:
                    owner = child_of(name)
                    if owner in created and owner not in seen:
                        seen[owner] = now
                if now >= next_report:
                    print(f"  {label}: {len(seen)}/{n} after {now - start:.0f} s", file=sys.stderr, flush=True)
                    next_report = now + 10
                time.sleep(0.01)
            total = time.monotonic() - start
            cpu = _cpu_seconds(proc.pid) - idle_cpu
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            sampler.stop.set()
    latencies = sorted(seen[k] - created[k] for k in seen)
    if len(seen) < n:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-4000:]
        print(f"{label}: only {len(seen)}/{n} children appeared within {timeout} s; its log ends:\n{tail}",
              file=sys.stderr)
    log.close()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"label": label, "done": len(seen), "p50": q[49], "p99": q[98], "total": total, "cpu": cpu,
            "rss_mb": sampler.peak / 2**20,
            "idle_rss_mb": idle_rss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="RLHFJobs applied at once")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    python = sys.executable
    ours = run_one("rlhf operator", [python, "-m", "rlhf_cli.cli", "operator", "--all-namespaces"],
                   lambda name: name, "ray.io/v1/rayjobs", args.n, args.timeout)
    bare = run_one("bare kopf (1 ConfigMap)", [python, "-m", "kopf", "run", "--quiet", "--standalone", "--all-namespaces",
                                               str(ROOT / "bench" / "bare_operator.py")],
                   lambda name: name.removesuffix("-bare") if name.endswith("-bare") else None,
                   "v1/configmaps", args.n, args.timeout)
    print(f"\nOperator scale: {args.n} RLHFJobs applied at once (2-core machine, API emulator in-process)\n")
    print(f"{'operator':<26}{'done':>6}{'p50 s':>9}{'p99 s':>9}{'all s':>9}{'CPU s':>8}{'peak RSS MB':>13}{'idle RSS MB':>13}")
    for r in (ours, bare):
        print(f"{r['label']:<26}{r['done']:>6}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['total']:>9.2f}{r['cpu']:>8.2f}"
              f"{r['rss_mb']:>13.1f}{r['idle_rss_mb']:>13.1f}")
    print(f"\nratio (ours / bare): p50 {ours['p50'] / bare['p50']:.2f}×, p99 {ours['p99'] / bare['p99']:.2f}×,"
          f" all {ours['total'] / bare['total']:.2f}×, peak RSS {ours['rss_mb'] / bare['rss_mb']:.2f}×")
    print(f"goals: p99 ≤ 2× bare → {'met' if ours['p99'] <= 2 * bare['p99'] else 'NOT met'};"
          f" peak RSS ≤ 150 MB → {'met' if ours['rss_mb'] <= 150 else 'NOT met'} ({ours['rss_mb']:.0f} MB at n={args.n})")
    return 0 if ours["done"] == args.n and bare["done"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
