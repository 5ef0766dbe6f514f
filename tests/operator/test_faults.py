"""Fault-injection tier: many jobs launched while the API server fails in every way a real one
does, with operator restarts mid-flight, all converge: each ends with exactly one RayJob and one
snapshot ConfigMap, in phase Pending/RayJobCreated (nothing plays KubeRay here), none Failed,
none stuck, no duplicates. The faults (tests/support/emulator/faults.py) are drawn from a seeded
RNG, so a failing run replays with the same seed.
"""

import os
import time
from collections import Counter

import pytest

from rlhf_operator.background import NUDGE_ANNOTATION
from support.operator_env import JOBS, NS, RAYJOBS, job_status, rlhfjob, wait_phase

N_JOBS = 20
SEED = int(os.environ.get("FAULT_SEED", "1212"))  # another seed: FAULT_SEED=n
RESTARTS = 3

# (action, verb, path, options): each fires with its probability, independently per request.
FAULTS = [
    ("status", "POST", r"/configmaps$", {"code": 500, "probability": 0.1}),
    ("status", "POST", r"/configmaps$", {"code": 429, "probability": 0.1, "retry_after": 1}),
    ("reset-before", "POST", r"/configmaps$", {"probability": 0.1}),
    ("reset-after", "POST", r"/configmaps$", {"probability": 0.15}),
    ("status", "POST", r"/rayjobs$", {"code": 409, "probability": 0.1}),
    ("status", "POST", r"/rayjobs$", {"code": 500, "probability": 0.1}),
    ("reset-before", "POST", r"/rayjobs$", {"probability": 0.1}),
    ("reset-after", "POST", r"/rayjobs$", {"probability": 0.15}),
    # the operator's guarded status writes and kopf's own status patch alike
    ("status", "PATCH", r"/rlhfjobs/[^/]+/status$", {"code": 409, "probability": 0.2}),
    ("status", "PATCH", r"/rlhfjobs/[^/]+/status$", {"code": 500, "probability": 0.05}),
    ("delay", "PATCH", r"/rlhfjobs/[^/]+/status$", {"delay": 0.2, "probability": 0.1}),
    ("status", "PATCH", r"/rlhfjobs/[^/]+$", {"code": 429, "probability": 0.05, "retry_after": 1}),
]


def _owned(kube, resource: str, uid: str) -> list[str]:
    return [o["metadata"]["name"] for o in kube.list(resource, NS)
            if any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences") or [])]


def _census(kube) -> dict[str, dict]:
    """Per job: its RayJobs and ConfigMaps (by owner), and its phase/reason."""
    out = {}
    for job in kube.list(JOBS, NS):
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        status = job.get("status") or {}
        out[name] = {"rayjobs": _owned(kube, RAYJOBS, uid), "configmaps": _owned(kube, "configmaps", uid),
                     "phase": status.get("phase"), "reason": status.get("reason")}
    return out


def _nudges(kube) -> int:
    """How often the operator's resync touched a stranded job (background._nudge_if_stranded)."""
    return sum(1 for r in kube.requests if r.method == "PATCH" and NUDGE_ANNOTATION in (r.text or ""))


def _converged(entry: dict) -> bool:
    return (len(entry["rayjobs"]) == 1 and len(entry["configmaps"]) == 1
            and entry["phase"] == "Pending" and entry["reason"] == "RayJobCreated")


@pytest.mark.timeout(240)
def test_jobs_converge_under_injected_faults(kube, operator):
    kube.faults.seed(SEED)
    for action, verb, path, options in FAULTS:
        kube.faults.add(action, verb, path, **options)
    settings = {"api_retry_seconds": 0.2, "api_retry_max_seconds": 1.0, "resync_interval": 1.0}
    operator.start(**settings)
    started = time.monotonic()

    restarts = 0
    for i in range(N_JOBS):
        kube.create(rlhfjob(name=f"job-{i:02d}"))
        if i % (N_JOBS // RESTARTS) == N_JOBS // RESTARTS - 1 and restarts < RESTARTS:
            time.sleep(0.3)  # some launches in flight
            operator.stop()
            operator.start(**settings)
            restarts += 1

    def all_converged():
        census = _census(kube)
        return census if len(census) == N_JOBS and all(_converged(e) for e in census.values()) else None

    try:
        census = kube.wait_for(all_converged, timeout=150, interval=0.5, message=lambda: "not converged: " + repr(
            {n: e for n, e in _census(kube).items() if not _converged(e)}))
    finally:
        injected = dict(sorted(kube.faults.injected.items()))
        print(f"\nfault tier: jobs={N_JOBS} restarts={restarts} seed={SEED} faults injected="
              f"{sum(injected.values())} {injected} after {time.monotonic() - started:.1f}s")
    kube.faults.clear()

    duplicates = sum(len(e["rayjobs"]) - 1 + len(e["configmaps"]) - 1 for e in census.values())
    converged = sum(_converged(e) for e in census.values())
    print(f"fault tier: converged={converged}/{N_JOBS} duplicates={duplicates} nudges={_nudges(kube)}"
          f" phases={dict(Counter(e['phase'] for e in census.values()))}")
    assert converged == N_JOBS and duplicates == 0
    assert restarts == RESTARTS
    assert all(injected.get(kind) for kind in ("500", "429", "409", "reset-before", "reset-after", "delay"))
    # no stray children: every RayJob and ConfigMap in the namespace belongs to one job
    assert len(kube.list(RAYJOBS, NS)) == N_JOBS
    assert all(job_status(kube, name).get("rayJobName") == name for name in census)


def test_a_conflict_on_kopfs_own_status_patch_does_not_strand_the_job(kube, operator):
    """launch hands its outcome (phase, rayJobName) to kopf's status patch; when that one patch
    gets a 409, kopf logs it and waits for an event that never comes. The resync notices the job
    unchanged and unlaunched, touches it, and kopf resumes: launch adopts the RayJob it made."""
    kube.faults.add("status", "PATCH", r"/rlhfjobs/[^/]+/status$", code=409, count=1)
    operator.start(resync_interval=0.5)
    kube.create(rlhfjob())
    status = wait_phase(kube, "Pending", reason="RayJobCreated", timeout=20)
    assert kube.faults.injected == {"409": 1}
    assert status["rayJobName"] == "demo" and [r["metadata"]["name"] for r in kube.list(RAYJOBS, NS)] == ["demo"]
    assert len(kube.list("configmaps", NS)) == 1
    assert _nudges(kube) >= 1
