"""The status machine as a pure function of what KubeRay reports."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rlhf_operator import status as st


def rayjob(deployment="", job="", reason="", message="", failed=0, succeeded=0, backoff=0, suspend=False, queued=False,
           cluster=None):
    labels = {"kueue.x-k8s.io/queue-name": "q"} if queued else {}
    status = {"jobDeploymentStatus": deployment, "jobStatus": job, "reason": reason, "message": message,
              "failed": failed, "succeeded": succeeded}
    if cluster:
        status["rayClusterName"] = cluster
    return {"metadata": {"name": "demo", "labels": labels}, "spec": {"backoffLimit": backoff, "suspend": suspend},
            "status": status}


@pytest.mark.parametrize("observed, phase, reason", [
    (rayjob(), "Pending", "RayJobCreated"),
    (rayjob(suspend=True), "Suspended", "Suspended"),
    (rayjob(suspend=True, queued=True), "Suspended", "WaitingForAdmission"),
    (rayjob("Initializing"), "Provisioning", "ClusterProvisioning"),
    (rayjob("Running", "PENDING"), "Provisioning", "JobPending"),
    (rayjob("Running", "RUNNING"), "Running", "Training"),
    (rayjob("Running", "SUCCEEDED"), "Running", "Finishing"),
    (rayjob("Complete", "SUCCEEDED", succeeded=1), "Succeeded", "Completed"),
    (rayjob("Complete", "STOPPED"), "Failed", "JobStopped"),
    (rayjob("Failed", "FAILED", "AppFailed", "exit 1", failed=1), "Failed", "AppFailed"),
    # kuberay#2314: the deployment says Failed while jobStatus still says RUNNING
    (rayjob("Failed", "RUNNING", "DeadlineExceeded", "deadline", failed=1, backoff=3), "Failed", "DeadlineExceeded"),
    # KubeRay writes Retrying instead of Failed when backoffLimit leaves a retry: Failed is final.
    (rayjob("Failed", "FAILED", "AppFailed", failed=3, backoff=2), "Failed", "AppFailed"),
    (rayjob("Retrying", "FAILED", reason="AppFailed", failed=1, backoff=2), "Retrying", "AppFailed"),
    # KubeRay looks at spec.suspend only after New → Initializing: a suspended start is no provisioning.
    (rayjob("Initializing", suspend=True), "Suspended", "Suspended"),
    (rayjob("Initializing", suspend=True, queued=True), "Suspended", "WaitingForAdmission"),
    (rayjob("Running", "RUNNING", suspend=True), "Suspended", "Suspended"),
    (rayjob("Failed", "", "SubmissionFailed", "submitter failed", failed=1), "Failed", "SubmissionFailed"),
    (rayjob("ValidationFailed", reason="ValidationFailed", message="bad spec"), "Failed", "ValidationFailed"),
    (rayjob("Suspending"), "Suspended", "Suspending"),
    (rayjob("Suspended", suspend=True), "Suspended", "Suspended"),
])
def test_phase_follows_deployment_status_first(observed, phase, reason):
    verdict = st.judge(st.Observation.of(observed))
    assert (verdict.phase, verdict.reason) == (phase, reason)


def test_kuberay_message_reaches_the_user():
    verdict = st.judge(st.Observation.of(rayjob("Failed", "FAILED", "AppFailed", "reward_func raised KeyError", failed=1)))
    assert "reward_func raised KeyError" in verdict.message


def walk(*observations):
    """Apply RayJob observations in order, as the operator would, collecting status and events."""
    current, events = {}, []
    for i, observed in enumerate(observations):
        patch = st.mirror(current, observed, generation=1, now=f"2026-01-01T00:00:{i:02d}Z")
        current = {**current, **patch.status}
        events += patch.events
    return current, events


def test_success_sequence_sets_conditions_events_and_times():
    current, events = walk(rayjob(), rayjob("Initializing", cluster="demo-abc"), rayjob("Running", "PENDING"),
                           rayjob("Running", "RUNNING"), rayjob("Complete", "SUCCEEDED", succeeded=1))
    assert current["phase"] == "Succeeded" and current["rayClusterName"] == "demo-abc"
    assert [e[1] for e in events] == ["RayJobCreated", "ClusterProvisioning", "JobPending", "Training", "Completed"]
    conditions = {c["type"]: c for c in current["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Running"]["status"] == "False"
    assert conditions["Succeeded"]["observedGeneration"] == 1
    assert current["completionTime"] == "2026-01-01T00:00:04Z"
    assert current["attempts"] == 1


def test_retry_then_success_counts_attempts():
    current, events = walk(rayjob("Running", "RUNNING", backoff=2),
                           rayjob("Retrying", "FAILED", "AppFailed", "oom", failed=1, backoff=2),
                           rayjob("Initializing", failed=1, backoff=2),
                           rayjob("Running", "RUNNING", failed=1, backoff=2),
                           rayjob("Complete", "SUCCEEDED", failed=1, succeeded=1, backoff=2))
    assert current["phase"] == "Succeeded" and current["attempts"] == 2
    assert ("Warning", "AppFailed") in [(e[0], e[1]) for e in events]
    assert any(message.startswith("Retrying: attempt 1 failed (AppFailed): oom") for _, _, message in events)


def test_terminal_phases_are_final():
    current, _ = walk(rayjob("Failed", "FAILED", "AppFailed", failed=1))
    later = st.mirror(current, rayjob("Retrying", failed=1, backoff=3), generation=2)
    assert later.status == {} and later.events == []


def test_attempts_never_decrease_and_stalled_clears_when_not_running():
    current, _ = walk(rayjob("Running", "RUNNING", failed=2, backoff=3))
    assert current["attempts"] == 3
    current["conditions"] = st.set_condition(current["conditions"], "Stalled", True, "NoHeartbeat", "x", 1)
    suspended = st.mirror(current, rayjob("Suspended", suspend=True), generation=1)
    assert "attempts" not in suspended.status  # would be 2 computed from the RayJob alone
    assert {c["type"]: c["status"] for c in suspended.status["conditions"]}["Stalled"] == "False"


def test_no_event_or_write_when_nothing_changed():
    current, _ = walk(rayjob("Running", "RUNNING"))
    again = st.mirror(current, rayjob("Running", "RUNNING"), generation=1, now="2026-01-01T00:01:00Z")
    assert again.status == {} and again.events == []


def test_last_transition_time_moves_only_when_status_flips():
    conditions = st.set_condition([], "Running", True, "Training", "a", 1, "2026-01-01T00:00:00Z")
    conditions = st.set_condition(conditions, "Running", True, "Training", "b", 2, "2026-01-01T00:05:00Z")
    assert conditions[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and conditions[0]["message"] == "b"
    assert conditions[0]["observedGeneration"] == 2
    conditions = st.set_condition(conditions, "Running", False, "", "", 2, "2026-01-01T00:09:00Z")
    assert conditions[0]["lastTransitionTime"] == "2026-01-01T00:09:00Z"


def test_stale_heartbeat_stalls_and_fresh_one_recovers():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    old_beat = (now - timedelta(seconds=700)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fresh = (now - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert st.stall_update({}, fresh, 600, 1, now) is None
    conditions, event = st.stall_update({}, old_beat, 600, 1, now)
    assert conditions[0]["type"] == "Stalled" and conditions[0]["status"] == "True" and event[1] == "Stalled"
    assert "700 s" in conditions[0]["message"]
    assert st.stall_update({"conditions": conditions}, old_beat, 600, 1, now) is None  # no repeat
    recovered, event = st.stall_update({"conditions": conditions}, fresh, 600, 1, now)
    assert recovered[0]["status"] == "False" and event == ("Normal", "Resumed", "progress heartbeat resumed")


def test_missing_heartbeat_counts_as_stalled():
    conditions, _ = st.stall_update({}, None, 600, 1)
    assert conditions[0]["status"] == "True"


def test_every_status_the_machine_writes_fits_the_generated_status_schema():
    from k8s_schemas import crd_errors
    from rlhf_api.jobstatus import RLHFJobStatus

    crd = Path(__file__).resolve().parents[2] / "crds" / "rlhf.dev_rlhfjobs.yaml"
    sequences = [
        (rayjob("Initializing", cluster="demo-abc"), rayjob("Running", "RUNNING"), rayjob("Complete", "SUCCEEDED", succeeded=1)),
        (rayjob("Running", "RUNNING"), rayjob("Retrying", "FAILED", failed=1, backoff=2), rayjob("Running", "RUNNING", failed=1, backoff=2)),
        (rayjob("Failed", "FAILED", reason="DeadlineExceeded", message="deadline", failed=1),),
        (rayjob(suspend=True, queued=True), rayjob("Suspended", suspend=True)),
    ]
    launched = {"rayJobName": "demo", "codeHash": "0123456789", "observedGeneration": 1,
                "progress": {"step": 3, "totalSteps": 10, "rewardMean": 0.5, "heartbeat": "2026-01-01T00:00:00Z"},
                "lastCheckpoint": "/checkpoints/step-3", "kopf": {"diffbase": "{}"}}
    for sequence in sequences:
        current, _ = walk(*sequence)
        status = {**launched, **current}
        stalled = st.stall_update(status, None, 600, 1)
        status["conditions"] = stalled[0] if stalled else status["conditions"]
        model = RLHFJobStatus.model_validate(status)
        assert set(model.model_extra) == {"kopf"}, model.model_extra  # every other field is declared
        job = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "demo"},
               "spec": {"model": {"path": "/m"}, "data": {"prompts": "/p.jsonl"},
                        "reward": {"remote": {"url": "http://rm/score"}}},
               "status": status}
        assert crd_errors(job, crd, "v1alpha1") == []


def test_diff_base_is_kopfs_for_rlhfjobs_and_empty_for_rayjobs():
    import kopf

    from rlhf_operator.startup import _RLHFJobDiffBase

    ours, stock = _RLHFJobDiffBase(field="status.kopf.diffbase"), kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    job = kopf.Body({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
                     "metadata": {"name": "demo", "labels": {"team": "a"}, "resourceVersion": "7", "uid": "u"},
                     "spec": {"model": {"path": "/m"}}, "status": {"phase": "Running", "kopf": {"diffbase": "{}"}}})
    for fields in (None, {("spec",)}, {("status", "phase")}):
        assert ours.build(body=job, extra_fields=fields) == stock.build(body=job, extra_fields=fields)
    rayjob = kopf.Body({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "demo"}, "spec": {"entrypoint": "x"}})
    assert ours.build(body=rayjob) == {}


# ----------------------------------------------------------------- conditions as metav1.Condition

REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"  # metav1.Condition's reason pattern


def test_every_condition_has_a_reason_also_when_it_is_off():
    import re

    for sequence in [(rayjob("Running", "RUNNING"), rayjob("Complete", "SUCCEEDED", succeeded=1)),
                     (rayjob("Running", "RUNNING"), rayjob("Suspended", suspend=True), rayjob("Running", "RUNNING")),
                     (rayjob("Running", "RUNNING"), rayjob("Failed", "FAILED", "AppFailed", "exit 1", failed=1))]:
        current, _ = walk(*sequence)
        for condition in current["conditions"]:
            assert re.fullmatch(REASON, condition["reason"]), condition
            assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(condition)
    running = {c["type"]: c for c in walk(rayjob("Running", "RUNNING"), rayjob("Complete", "SUCCEEDED",
                                                                                succeeded=1))[0]["conditions"]}["Running"]
    assert (running["status"], running["reason"], running["message"]) == ("False", "Completed", "training finished")


@pytest.mark.parametrize("given, written", [
    ("AppFailed", "AppFailed"), ("Deadline exceeded!", "DeadlineExceeded"), ("", "Unknown"), ("9lives", "Lives"),
    ("a:b,c_d", "a:b,c_d"), ("x" * 2000, "X" + "x" * 1023),
])
def test_a_reason_is_made_to_fit_metav1_condition(given, written):
    import re

    condition = st.set_condition([], "Failed", True, given, "m" * 40000, 1)[0]
    assert condition["reason"] == written and re.fullmatch(REASON, written) and len(condition["message"]) == 32768


# ----------------------------------------------------------------- refused children, API outages


def answer(code, reason="", message="", details_kind=""):
    return st.ApiAnswer(code=code, reason=reason, message=message, details_kind=details_kind)


@pytest.mark.parametrize("refused, kind, reason, words", [
    (answer(404, "NotFound", "the server could not find the requested resource"), "RayJob", "KubeRayNotInstalled",
     ["KubeRay is not installed: the RayJob kind ray.io/v1 is unknown to this cluster", "install the KubeRay operator",
      "404 NotFound: the server could not find the requested resource"]),
    (answer(404, "NotFound", 'namespaces "team-a" not found', "namespaces"), "RayJob", "ChildRefused",
     ['namespaces "team-a" not found']),
    (answer(403, "Forbidden", 'rayjobs.ray.io is forbidden: User "system:serviceaccount:rlhf:op" cannot create'),
     "RayJob", "ChildForbidden", ["allow its service account to create rayjobs.ray.io", "cannot create"]),
    (answer(403, "Forbidden", 'configmaps "demo-config" is forbidden: exceeded quota: q, requested: count/configmaps=1'),
     "ConfigMap", "ChildForbidden", ["a ResourceQuota in namespace team-a", "exceeded quota: q"]),
    (answer(403, "Forbidden", 'rayjobs.ray.io "demo" is forbidden: unable to create new content in namespace team-a'
                              ' because it is being terminated'), "RayJob", "ChildRefused",
     ["namespace team-a is being deleted", "being terminated"]),
    (answer(422, "Invalid", 'RayJob.ray.io "demo" is invalid: spec.entrypoint: Required value'), "RayJob",
     "ChildInvalid", ["found RayJob demo invalid", "spec.entrypoint: Required value"]),
    (answer(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728"), "RayJob", "ChildTooLarge",
     ["larger than the API server stores", "limit is 3145728"]),
    (answer(422, "Invalid", 'ConfigMap "demo-code-1" is invalid: []: Too long: must have at most 1048576 bytes'),
     "ConfigMap", "ChildTooLarge", ["configMapRef", "1048576 bytes"]),
    (answer(500, "InternalError", "etcdserver: request is too large"), "RayJob", "ChildTooLarge", ["etcdserver"]),
    (answer(400, "BadRequest", "the body of the request was in an unknown format"), "RayJob", "ChildInvalid",
     ["unknown format"]),
    (answer(405, "MethodNotAllowed", "the server does not allow this method"), "RayJob", "ChildRefused",
     ["refused to create RayJob demo"]),
])
def test_a_refused_child_fails_the_job_with_the_fix_and_the_api_servers_words(refused, kind, reason, words):
    verdict = st.refusal(refused, kind, "ray.io/v1" if kind == "RayJob" else "v1", "demo", "team-a")
    assert (verdict.phase, verdict.reason) == ("Failed", reason)
    assert "then delete and re-create this RLHFJob" in verdict.message or "being deleted" in verdict.message
    for word in words:
        assert word in verdict.message


def test_a_refused_status_is_failed_with_a_condition_and_fits_the_schema():
    from k8s_schemas import crd_errors

    verdict = st.refusal(answer(404, "NotFound", "the server could not find the requested resource"),
                         "RayJob", "ray.io/v1", "demo", "team-a")
    degraded = st.api_degraded([], "503 ServiceUnavailable: x", 130, 60, 1, "2026-01-01T00:00:00Z")
    status = st.refused_status({"conditions": degraded}, verdict, 1, "2026-01-01T00:01:00Z")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Failed" and status["reason"] == "KubeRayNotInstalled" and status["completionTime"]
    assert conditions["Failed"]["status"] == "True" and conditions["Failed"]["reason"] == "KubeRayNotInstalled"
    assert conditions["Degraded"]["status"] == "False" and conditions["Degraded"]["reason"] == "APIRecovered"
    crd = Path(__file__).resolve().parents[2] / "crds" / "rlhf.dev_rlhfjobs.yaml"
    job = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "demo"},
           "spec": {"model": {"path": "/m"}, "data": {"prompts": "/p.jsonl"}, "reward": {"remote": {"url": "http://r"}}},
           "status": status}
    assert crd_errors(job, crd, "v1alpha1") == []
    job["status"] = {**status, "conditions": [{**conditions["Failed"], "reason": ""}]}
    assert crd_errors(job, crd, "v1alpha1")  # the schema refuses an empty reason, as metav1.Condition does
    job["status"] = {**status, "conditions": [{"type": "Failed", "status": "True"}]}
    assert crd_errors(job, crd, "v1alpha1")  # ... and a condition without reason, message, lastTransitionTime


def test_degraded_is_set_while_retrying_and_cleared_once_through():
    conditions = st.api_degraded([], "503 ServiceUnavailable: etcd leader changed", 125.4, 48, 1, "2026-01-01T00:00:00Z")
    degraded = st.get_condition(conditions, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "TransientAPIErrors")
    assert "for 125 s" in degraded["message"] and "etcd leader changed" in degraded["message"]
    assert "still retrying, next in 48 s" in degraded["message"]
    again = st.api_degraded(conditions, "429 TooManyRequests: slow down", 300, 60, 1, "2026-01-01T00:03:00Z")
    assert st.get_condition(again, "Degraded")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    recovered = st.api_recovered(again, 1, "2026-01-01T00:04:00Z")
    assert st.get_condition(recovered, "Degraded")["status"] == "False"
    assert st.get_condition(recovered, "Degraded")["lastTransitionTime"] == "2026-01-01T00:04:00Z"
    assert st.api_recovered(recovered, 1) == recovered and st.api_recovered([], 1) == []  # nothing to clear
