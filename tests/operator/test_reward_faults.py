"""Reward faults through the real kopf operator and the API emulator: the driver's progress report
says it stopped on reward faults; the operator shows it as the RewardFaults condition, mirrors the
error counts into status.progress, and ends the job Failed with reason RewardFaults when KubeRay
reports the Ray job failed."""

from datetime import datetime, timezone

from support.operator_env import NS, RAYJOBS, conditions, job_status, kuberay, reasons, rlhfjob, wait_phase

QUOTE = ("reward faults on 50% of samples over the last 2 steps (reward.maxErrorRate 0.2); first errors: sample 1:"
         " KeyError: 'answer' (reward_func.py, line 4)")


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_reward_faults_reported_by_the_driver_fail_the_job_with_the_drivers_message(kube, operator, progress_server):
    operator.start(progress_url=progress_server.url)
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    progress_server.report = {"state": "training", "step": 2, "heartbeat": now(),
                              "rewardErrors": {"raised": 3, "timeout": 1, "invalid": 0}, "rewardErrorRate": 0.125}
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-abc")
    status = kube.wait_for(lambda: job_status(kube) if (job_status(kube).get("progress") or {}).get("step") == 2 else None)
    assert status["progress"]["rewardErrors"] == {"raised": 3, "timeout": 1, "invalid": 0}
    assert status["progress"]["rewardErrorRate"] == 0.125
    assert "RewardFaults" not in conditions(status)  # faults below the limit are counted, not a condition

    progress_server.report = {"state": "failed", "step": 3, "heartbeat": now(), "failureReason": "RewardFaults",
                              "message": QUOTE, "rewardErrors": {"raised": 9, "timeout": 1, "invalid": 2},
                              "rewardErrorRate": 0.5}
    faults = kube.wait_for(lambda: conditions(job_status(kube)).get("RewardFaults"))
    assert faults["status"] == "True" and faults["reason"] == "RewardFaults" and faults["message"] == QUOTE
    assert job_status(kube)["progress"]["rewardErrorRate"] == 0.5
    # The driver exits 1; KubeRay reports the Ray job failed, with its own generic words.
    kuberay(kube, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
            message="Job entrypoint command failed with exit code 1", failed=1)
    status = wait_phase(kube, "Failed", "RewardFaults")
    assert status["message"] == QUOTE
    assert conditions(status)["Failed"]["reason"] == "RewardFaults"
    kube.wait_for(lambda: reasons(kube).count("RewardFaults") >= 2)  # the condition's Event, and the phase's
