"""The code check before the RayJob, through the real kopf operator and the API emulator.

The emulator runs no pods, so the test plays the kubelet: it runs the real check
(``python -m rlhf_workers --check-code``) on CPU in a subprocess over the snapshot the operator
made (its worker config and code, paths mapped to a temporary directory), and writes what a
kubelet would into the pod's status: the phase, and the termination message the check wrote to
its terminationMessagePath."""

import json
import subprocess
import sys

import pytest

from rlhf_api.podsecurity import restricted_violations
from rlhf_operator import codecheck
from support.operator_env import NS, RAYJOBS, REWARD, conditions, job_status, reasons, rlhfjob, wait_phase

PODS = "v1/pods"
ROWS = [{"input": "2+2?", "answer": "4"}, {"input": "3+3?", "answer": "6"}]
RAISES = '''
def reward_func(queries, prompts, labels):
    for label in labels:
        if label == "6":
            raise KeyError("grader for " + label)
    return {"rewards": [1.0] * len(queries)}
'''


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(codecheck, "POLL_SECONDS", 0.3)


def the_pod(kube):
    return kube.wait_for(lambda: (kube.list(PODS, NS, label_selector="app.kubernetes.io/component=codecheck")
                                  or [None])[0])


def run_the_check(kube, pod, tmp_path):
    """What the pod's container does, on this machine: returns (phase, terminated state)."""
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "rlhf-code"]
    snapshot = kube.get("v1/configmaps", volume["configMap"]["name"], NS)["data"]
    config = json.loads(snapshot["worker.json"])
    (tmp_path / "reward_func.py").write_text(snapshot["reward_func.py"])
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config["rewardCodePath"] = str(tmp_path / "reward_func.py")  # mounted at /etc/rlhf/code in the pod
    config["spec"]["data"]["prompts"] = str(tmp_path / "p.jsonl")  # /data/p.jsonl on the job's volume
    config["spec"]["reward"]["function"]["path"] = str(tmp_path / "reward_func.py")
    (tmp_path / "worker.json").write_text(json.dumps(config))
    command = pod["spec"]["containers"][0]["command"]
    assert command[:4] == ["python", "-m", "rlhf_workers", "--check-code"]
    done = subprocess.run([sys.executable, "-m", "rlhf_workers", "--check-code", "--config", str(tmp_path / "worker.json"),
                           "--result-file", str(tmp_path / "termination-log")], capture_output=True, text=True,
                          timeout=120)
    message = (tmp_path / "termination-log").read_text()
    phase = "Succeeded" if done.returncode == 0 else "Failed"
    return phase, {"exitCode": done.returncode, "reason": "Completed" if done.returncode == 0 else "Error",
                   "message": message, "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:05Z"}


def kubelet(kube, pod, phase, state):
    """Write what a kubelet writes when the container ended (or waits)."""
    kube.patch_status(PODS, pod["metadata"]["name"], {"phase": phase, "containerStatuses": [{
        "name": "codecheck", "ready": False, "restartCount": 0, "image": pod["spec"]["containers"][0]["image"],
        "imageID": "", "state": state}]}, NS)


def test_code_that_passes_the_check_gets_its_rayjob_and_the_pod_is_removed(kube, operator, tmp_path):
    operator.start(preflight_pods=True)
    kube.create(rlhfjob())
    pod = the_pod(kube)
    assert restricted_violations(pod["spec"]) == []
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "RLHFJob"
    assert not any("gpu" in name for name in pod["spec"]["containers"][0]["resources"]["limits"])
    status = wait_phase(kube, "Pending", "CheckingCode")
    assert conditions(status)["RewardCheckFailed"]["status"] == "Unknown"
    assert kube.get(RAYJOBS, "demo", NS) is None  # no RayJob, no GPU, while the check runs
    phase, terminated = run_the_check(kube, pod, tmp_path)
    assert phase == "Succeeded", terminated["message"]
    kubelet(kube, pod, phase, {"terminated": terminated})
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    status = wait_phase(kube, "Pending", "RayJobCreated")
    check = conditions(status)["RewardCheckFailed"]
    assert check["status"] == "False" and check["reason"] == "CodeCheckPassed" and "2 rows" in check["message"]
    kube.wait_for(lambda: kube.get(PODS, pod["metadata"]["name"], NS) is None)
    kube.wait_for(lambda: "CodeCheckPassed" in reasons(kube))


def test_code_that_fails_the_check_ends_the_job_with_the_error_and_line_and_creates_nothing(kube, operator, tmp_path):
    operator.start(preflight_pods=True)
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"inline": RAISES}}
    kube.create(rlhfjob(spec=spec))
    pod = the_pod(kube)
    phase, terminated = run_the_check(kube, pod, tmp_path)
    assert phase == "Failed"
    kubelet(kube, pod, phase, {"terminated": terminated})
    status = wait_phase(kube, "Failed", "RewardCheckFailed")
    assert "KeyError: 'grader for 6'" in status["message"] and "reward_func.py, line 5" in status["message"]
    failed = conditions(status)["RewardCheckFailed"]
    assert failed["status"] == "True" and failed["message"] == status["message"]
    assert conditions(status)["Failed"]["reason"] == "RewardCheckFailed"
    assert kube.get(RAYJOBS, "demo", NS) is None
    kube.wait_for(lambda: kube.get(PODS, pod["metadata"]["name"], NS) is None)
    kube.wait_for(lambda: kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo") == [])
    kube.wait_for(lambda: "RewardCheckFailed" in reasons(kube))


def test_a_check_pod_that_never_runs_fails_the_job_naming_why(kube, operator, monkeypatch):
    monkeypatch.setattr(codecheck, "WAIT_SECONDS", 1.0)
    operator.start(preflight_pods=True)
    kube.create(rlhfjob())
    pod = the_pod(kube)
    kubelet(kube, pod, "Pending", {"waiting": {"reason": "ImagePullBackOff",
                                               "message": 'Back-off pulling image "example/workers:test"'}})
    status = wait_phase(kube, "Failed", "RewardCheckFailed")
    assert "ImagePullBackOff" in status["message"] and "did not finish within 1 s" in status["message"]
    assert kube.get(RAYJOBS, "demo", NS) is None


def test_preflight_false_skips_the_check(kube, operator):
    operator.start(preflight_pods=True)
    spec = rlhfjob()["spec"]
    spec["preflight"] = False
    kube.create(rlhfjob(spec=spec))
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    assert kube.list(PODS, NS) == []
    assert "RewardCheckFailed" not in conditions(job_status(kube))


def test_the_reward_in_the_check_is_the_jobs_own(kube, operator):
    operator.start(preflight_pods=True)
    kube.create(rlhfjob())
    pod = the_pod(kube)
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "rlhf-code"]
    assert kube.get("v1/configmaps", volume["configMap"]["name"], NS)["data"]["reward_func.py"] == REWARD


def test_a_job_launched_before_the_check_is_not_checked_on_resume(kube, operator):
    operator.start(preflight_pods=False)
    kube.create(rlhfjob())
    kube.wait_for(lambda: job_status(kube).get("rayJobName"))
    operator.stop()
    operator.start(preflight_pods=True)  # resumes "demo", launched already
    kube.create(rlhfjob(name="second"))
    second = kube.wait_for(lambda: [p for p in kube.list(PODS, NS) if p["metadata"]["name"].startswith("second-")])
    assert [p["metadata"]["name"] for p in kube.list(PODS, NS)] == [second[0]["metadata"]["name"]]
    assert job_status(kube)["phase"] == "Pending" and job_status(kube)["reason"] == "RayJobCreated"
