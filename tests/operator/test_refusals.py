"""Children the API server refuses, and API errors that pass: the job always ends or says why it waits.

Every refusal here is real HTTP from the emulator to the operator's `kubernetes` client: a RayJob
kind the cluster does not serve (its CRD deleted), or a KMock reaction answering one verb on one
path with a Kubernetes Status (kube.kmock['post /apis/...'] << code << status).
"""

import time
from pathlib import Path

import pytest

from k8s_schemas import crd_errors
from support.operator_env import NS, RAYJOBS, conditions, job_status, reasons, rlhfjob, wait_phase

CRD = Path(__file__).resolve().parents[2] / "crds" / "rlhf.dev_rlhfjobs.yaml"
RAYJOBS_PATH = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs"
CONFIGMAPS_PATH = f"/api/v1/namespaces/{NS}/configmaps"
SNAPSHOTS = "rlhf.dev/job-name=demo"


def status_answer(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}


def posts(kube, path):
    return sum(1 for r in kube.requests if r.method == "POST" and r.url.path == path)


def status_errors(kube):
    """What the CRD's schema says of the job's stored status (on a valid spec, to judge the status alone)."""
    job = {**rlhfjob(), "status": job_status(kube)}
    return crd_errors(job, CRD, "v1alpha1")


def rayjobs(kube):
    try:
        return kube.list(RAYJOBS, NS)
    except LookupError:  # the cluster does not serve RayJobs
        return []


def warning(kube, reason):
    """The job's latest warning Event with ``reason`` (posted just after the status is written)."""
    def posted():
        return kube.events(NS, involved_name="demo", involved_kind="RLHFJob", reason=reason, type="Warning")
    return kube.wait_for(posted, timeout=5, message=lambda: f"no {reason} Event; the job's Events: {reasons(kube)}")[-1]


def assert_refused_and_cleaned_up(kube, reason, *words):
    """Failed with ``reason`` in phase, condition and Event, which carry ``words``; the snapshot
    ConfigMap deleted; the status valid against the CRD; and no RayJob create tried again."""
    status = wait_phase(kube, "Failed", reason)
    failed = conditions(status)["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", reason) and status["completionTime"]
    event = warning(kube, reason)
    for word in words:
        assert word in status["message"] and word in failed["message"] and word in event["message"]
    assert kube.list("v1/configmaps", NS, label_selector=SNAPSHOTS) == []
    assert rayjobs(kube) == []
    assert status_errors(kube) == []
    tried = posts(kube, RAYJOBS_PATH)
    time.sleep(1.0)  # kopf's own retries of a failed handler start after 0.1 s in the tests
    assert posts(kube, RAYJOBS_PATH) == tried and job_status(kube)["phase"] == "Failed"
    return status


def test_a_cluster_without_kuberay_fails_the_job_naming_the_fix(kube, operator):
    kube.delete("apiextensions.k8s.io/v1/customresourcedefinitions", "rayjobs.ray.io")  # a real 404 from now on
    operator.start()
    kube.create(rlhfjob())
    assert_refused_and_cleaned_up(kube, "KubeRayNotInstalled",
                                  "KubeRay is not installed: the RayJob kind ray.io/v1 is unknown to this cluster",
                                  "install the KubeRay operator",
                                  "404 NotFound: the server could not find the requested resource")
    assert operator.metrics.children_refused == 1
    tried = posts(kube, RAYJOBS_PATH)
    operator.restart()  # a resumed operator leaves the failed job alone
    time.sleep(1.0)
    assert posts(kube, RAYJOBS_PATH) == tried and job_status(kube)["reason"] == "KubeRayNotInstalled"


@pytest.mark.parametrize("code, api_reason, api_message, reason, fix", [
    (403, "Forbidden", 'rayjobs.ray.io is forbidden: User "system:serviceaccount:rlhf:rlhf-operator" cannot create'
     ' resource "rayjobs" in API group "ray.io" in the namespace "team-a"', "ChildForbidden",
     "allow its service account to create rayjobs.ray.io"),
    (403, "Forbidden", 'rayjobs.ray.io "demo" is forbidden: exceeded quota: ray, requested: count/rayjobs.ray.io=1,'
     ' used: count/rayjobs.ray.io=4, limited: count/rayjobs.ray.io=4', "ChildForbidden",
     "a ResourceQuota in namespace team-a refuses RayJob demo"),
    (422, "Invalid", 'RayJob.ray.io "demo" is invalid: spec.rayClusterSpec.headGroupSpec.rayStartParams: Invalid'
     ' value: "object": must be a map of strings', "ChildInvalid", "correct the spec field it names"),
    (413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728", "ChildTooLarge",
     "make the inline reward or agent code smaller"),
])
def test_a_refused_rayjob_fails_the_job_and_removes_its_snapshot(kube, operator, code, api_reason, api_message,
                                                                  reason, fix):
    kube.kmock[f"post {RAYJOBS_PATH}"] << code << status_answer(code, api_reason, api_message)
    operator.start()
    kube.create(rlhfjob())
    assert_refused_and_cleaned_up(kube, reason, fix, f"{code} {api_reason}: {api_message[:60]}")


def test_a_refused_snapshot_configmap_fails_the_job_before_any_rayjob(kube, operator):
    message = 'ConfigMap "demo-code-0123456789" is invalid: []: Too long: must have at most 1048576 bytes'
    kube.kmock[f"post {CONFIGMAPS_PATH}"] << 422 << status_answer(422, "Invalid", message)
    operator.start()
    kube.create(rlhfjob())
    assert_refused_and_cleaned_up(kube, "ChildTooLarge", "configMapRef", "must have at most 1048576 bytes")
    assert posts(kube, RAYJOBS_PATH) == 0


def test_transient_retries_back_off_to_a_cap():
    from rlhf_operator.launch import retry_delay

    assert [retry_delay(n, 3, 60) for n in range(7)] == [3, 6, 12, 24, 48, 60, 60]
    assert retry_delay(10_000, 3, 60) == 60


def test_transient_errors_are_retried_with_backoff_and_the_degraded_condition_says_so(kube, operator):
    kube.kmock[f"post {RAYJOBS_PATH}"][:4] << 503 << status_answer(503, "ServiceUnavailable", "etcd leader changed")
    operator.start(api_retry_seconds=0.2, api_degraded_seconds=0.5)
    started = time.monotonic()
    kube.create(rlhfjob())
    degraded = kube.wait_for(lambda: conditions(job_status(kube)).get("Degraded", {}).get("status") == "True"
                             and conditions(job_status(kube))["Degraded"])
    assert degraded["reason"] == "TransientAPIErrors" and "etcd leader changed" in degraded["message"]
    assert "still retrying" in degraded["message"]
    assert job_status(kube)["phase"] == "Pending"
    status = wait_phase(kube, "Pending", "RayJobCreated")
    # Four failures backed off 0.2 + 0.4 + 0.8 + 1.6 s before the fifth try got through.
    assert time.monotonic() - started >= 2.8 and posts(kube, RAYJOBS_PATH) == 5
    recovered = kube.wait_for(lambda: conditions(job_status(kube))["Degraded"]["status"] == "False"
                              and conditions(job_status(kube))["Degraded"])
    assert recovered["reason"] == "APIRecovered" and conditions(status)["Validated"]["status"] == "True"
    assert len(kube.list(RAYJOBS, NS)) == 1 and len(kube.list("v1/configmaps", NS, label_selector=SNAPSHOTS)) == 1
    assert len(kube.events(NS, involved_name="demo", reason="TransientAPIErrors")) == 1
    assert status_errors(kube) == []


@pytest.mark.parametrize("api_reason", ["Conflict", "AlreadyExists"])
def test_a_conflict_on_create_is_retried_not_fatal(kube, operator, api_reason):
    """409 Conflict, or AlreadyExists for a RayJob that is gone when read: both pass on retrying."""
    kube.kmock[f"post {RAYJOBS_PATH}"][:2] << 409 << status_answer(409, api_reason, 'rayjobs.ray.io "demo": busy')
    operator.start(api_retry_seconds=0.1)
    kube.create(rlhfjob())
    wait_phase(kube, "Pending", "RayJobCreated")
    assert len(kube.list(RAYJOBS, NS)) == 1 and "Degraded" not in conditions(job_status(kube))


@pytest.mark.parametrize("case", ["invalid spec", "name taken"])
def test_every_failed_launch_has_its_failed_condition_and_leaves_no_snapshot(kube, operator, case):
    if case == "name taken":
        kube.create({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "demo", "namespace": NS},
                     "spec": {"entrypoint": "python other.py"}})
    operator.start()
    kube.create(rlhfjob(spec={"model": {"path": "/m"}}) if case == "invalid spec" else rlhfjob())
    reason = "ValidationFailed" if case == "invalid spec" else "ChildConflict"
    status = wait_phase(kube, "Failed", reason)
    assert (conditions(status)["Failed"]["status"], conditions(status)["Failed"]["reason"]) == ("True", reason)
    assert kube.list("v1/configmaps", NS, label_selector=SNAPSHOTS) == []
    assert status_errors(kube) == []


def test_a_snapshot_over_the_api_servers_limit_is_refused_before_anything_is_created(kube, operator):
    """Reward code in a ConfigMap just within the API server's 1 MiB of data, plus the worker
    config beside it, makes a snapshot over the limit: preflight fails the job, nothing is posted."""
    operator.start()
    body = "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"
    reward = "#" * (1_048_000 - len(body) - 1) + "\n" + body
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big-reward", "namespace": NS},
                 "data": {"reward_func.py": reward}})
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"configMapRef": {"name": "big-reward"}}}
    kube.create(rlhfjob(spec=spec))
    status = wait_phase(kube, "Failed", "ChildTooLarge")
    assert "must have at most 1048576 bytes" in status["message"] and "nothing was created" in status["message"]
    assert conditions(status)["Failed"]["reason"] == "ChildTooLarge"
    assert posts(kube, CONFIGMAPS_PATH) == 0 and posts(kube, RAYJOBS_PATH) == 0  # the operator posted nothing
    warning(kube, "ChildTooLarge")
