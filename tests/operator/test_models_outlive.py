"""Models that outlive the job, as the operator sees to it: a checkpoint path that is not on a
persistent volume gets one Warning Event (not one per operator restart), and status.finalModel
says where the trained model is: from the driver's progress report, or from the spec's
persistent checkpoint volume when the job succeeded before a poll saw the report."""

import copy
import time
from datetime import datetime, timezone

from support.operator_env import JOBS, NS, RAYJOBS, SPEC, job_status, kuberay, rlhfjob, wait_phase

PVC = {"path": "/ckpt/demo", "volume": {"persistentVolumeClaim": {"claimName": "rlhf-checkpoints"}}}


def ephemeral_warnings(kube, name="demo"):
    return [e for e in kube.events(NS, involved_name=name, involved_kind="RLHFJob")
            if e["type"] == "Warning" and e["reason"] == "EphemeralCheckpoints"]


def test_a_job_without_a_checkpoint_volume_gets_one_warning_event_even_across_restarts(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    warning, = kube.wait_for(lambda: ephemeral_warnings(kube))
    assert "spec.checkpoint.volume" in warning["message"] and "persistentVolumeClaim" in warning["message"]
    operator.restart()  # launch runs again on resume and adopts the RayJob: no second warning
    kube.wait_for(lambda: job_status(kube).get("rayJobName"))
    time.sleep(1.0)
    assert len(ephemeral_warnings(kube)) == 1


def test_a_job_on_a_pvc_gets_no_warning(kube, operator):
    operator.start()
    kube.create(rlhfjob(spec={**copy.deepcopy(SPEC), "checkpoint": PVC}))
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    kube.wait_for(lambda: any(e["reason"] == "RayJobCreated" for e in kube.events(NS, involved_name="demo")))
    assert ephemeral_warnings(kube) == []


def test_final_model_comes_from_the_progress_report(kube, operator, progress_server):
    operator.start(progress_url=progress_server.url)
    kube.create(rlhfjob(spec={**copy.deepcopy(SPEC), "checkpoint": PVC}))
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    progress_server.report = {"state": "finished", "step": 4, "totalSteps": 4, "heartbeat": now,
                              "finalModel": "/ckpt/demo/final_model"}
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-abc")
    status = kube.wait_for(lambda: job_status(kube) if job_status(kube).get("finalModel") else None)
    assert status["finalModel"] == "/ckpt/demo/final_model"


def test_a_succeeded_job_on_a_pvc_names_its_final_model_without_a_report(kube, operator):
    operator.start()
    kube.create(rlhfjob(spec={**copy.deepcopy(SPEC), "checkpoint": PVC}))
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    kuberay(kube, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    assert wait_phase(kube, "Succeeded")["finalModel"] == "/ckpt/demo/final_model"


def test_a_succeeded_job_whose_model_went_with_its_pods_names_none(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    kuberay(kube, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    assert "finalModel" not in wait_phase(kube, "Succeeded")
    assert kube.get(JOBS, "demo", NS)["status"].get("finalModel") is None
