"""The operator's side of reward faults, as pure status functions: the driver's progress report
(state failed, failureReason RewardFaults) becomes the RewardFaults condition, the error counts
and rate go into status.progress, and KubeRay's failure of that job ends it Failed/RewardFaults."""

from pathlib import Path

from rlhf_api.jobstatus import RLHFJobStatus
from rlhf_api.progress import ProgressReport
from rlhf_operator import status as st

CRD = Path(__file__).resolve().parents[2] / "crds" / "rlhf.dev_rlhfjobs.yaml"
QUOTE = ("reward faults on 40% of samples over the last 3 steps (reward.maxErrorRate 0.25); first: sample 3: "
         "ZeroDivisionError: division by zero at reward_func.py line 7")


def failed_report(**extra):
    return ProgressReport(state="failed", step=4, failure_reason="RewardFaults", message=QUOTE,
                          reward_errors={"raised": 12, "timeout": 3, "invalid": 1}, reward_error_rate=0.4, **extra)


def running(conditions=()):
    return {"phase": "Running", "reason": "Training", "conditions": list(conditions)}


def test_progress_carries_the_error_counts_and_rate():
    progress = st.progress_of(failed_report(heartbeat="2026-01-01T00:00:00Z"))
    assert progress["rewardErrors"] == {"raised": 12, "timeout": 3, "invalid": 1}
    assert progress["rewardErrorRate"] == 0.4
    assert progress["step"] == 4 and progress["heartbeat"] == "2026-01-01T00:00:00Z"


def test_a_report_without_reward_errors_leaves_them_out_of_progress():
    progress = st.progress_of(ProgressReport(state="training", step=2, reward_mean=0.5))
    assert "rewardErrors" not in progress and "rewardErrorRate" not in progress
    assert progress == {"step": 2, "rewardMean": 0.5}


def test_a_report_of_reward_faults_sets_the_condition_with_the_drivers_message():
    conditions, event = st.reward_faults_update(running(), failed_report(), 1, now="2026-01-01T00:00:00Z")
    faults = st.get_condition(conditions, "RewardFaults")
    assert faults == {"type": "RewardFaults", "status": "True", "reason": "RewardFaults", "message": QUOTE,
                      "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    assert event == ("Warning", "RewardFaults", QUOTE)
    # Once set, the same report changes nothing (no Event every poll).
    assert st.reward_faults_update(running(conditions), failed_report(), 1) is None


def test_other_reports_set_no_reward_faults_condition():
    for report in (ProgressReport(state="training", step=3, reward_errors={"raised": 2}, reward_error_rate=0.1),
                   ProgressReport(state="failed", message="CUDA out of memory"),
                   ProgressReport(state="failed", failure_reason="OutOfMemory", message="oom"), None):
        assert st.reward_faults_update(running(), report, 1) is None


def test_kuberays_failure_of_a_job_stopped_on_reward_faults_is_failed_with_reason_reward_faults():
    conditions, _ = st.reward_faults_update(running(), failed_report(), 1)
    rayjob = {"metadata": {"name": "demo"}, "spec": {},
              "status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                         "message": "Job entrypoint command failed with exit code 1", "failed": 1}}
    patch = st.mirror(running(conditions), rayjob, 1)
    assert (patch.status["phase"], patch.status["reason"], patch.status["message"]) == ("Failed", "RewardFaults", QUOTE)
    failed = st.get_condition(patch.status["conditions"], "Failed")
    assert failed["status"] == "True" and failed["reason"] == "RewardFaults" and failed["message"] == QUOTE
    assert ("Warning", "RewardFaults", f"Failed: {QUOTE}") in patch.events
    # Without the condition the same RayJob failure keeps KubeRay's reason.
    assert st.mirror(running(), rayjob, 1).status["reason"] == "AppFailed"


def test_a_status_with_reward_faults_is_valid_for_the_model_and_the_crd():
    from k8s_schemas import crd_errors

    conditions, _ = st.reward_faults_update(running(), failed_report(), 1)
    status = {"phase": "Failed", "reason": "RewardFaults", "message": QUOTE, "conditions": conditions,
              "progress": st.progress_of(failed_report())}
    RLHFJobStatus.model_validate(status)
    job = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "demo"},
           "spec": {"model": {"path": "/m"}, "data": {"prompts": "/p.jsonl"},
                    "reward": {"remote": {"url": "http://rm/score"}}}, "status": status}
    assert crd_errors(job, CRD, "v1alpha1") == []


def test_a_retried_attempt_clears_the_condition_so_a_later_failure_keeps_its_own_reason():
    conditions, _ = st.reward_faults_update(running(), failed_report(), 1)
    retrying = {"metadata": {"name": "demo"}, "spec": {"backoffLimit": 2},
                "status": {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "reason": "AppFailed", "failed": 1}}
    patch = st.mirror(running(conditions), retrying, 1)
    assert patch.status["phase"] == "Retrying"
    faults = st.get_condition(patch.status["conditions"], "RewardFaults")
    assert faults["status"] == "False" and faults["reason"] == "NewAttempt" and QUOTE in faults["message"]
    oom = {"metadata": {"name": "demo"}, "spec": {},
           "status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                      "message": "OOMKilled", "failed": 2}}
    later = st.mirror(running(patch.status["conditions"]), oom, 1)
    assert later.status["reason"] == "AppFailed" and later.status["message"] == "OOMKilled"
    # and the next attempt stopping on reward faults sets it again, with a fresh transition
    again, event = st.reward_faults_update(running(patch.status["conditions"]), failed_report(), 1)
    assert st.get_condition(again, "RewardFaults")["status"] == "True" and event[1] == "RewardFaults"
