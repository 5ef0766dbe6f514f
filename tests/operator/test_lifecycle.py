"""RLHFJob → RayJob lifecycle with the real kopf operator against the API emulator."""

import copy
import time
from datetime import datetime, timedelta, timezone

import pytest

from k8s_schemas import rayjob_errors
from support.fake_kuberay import FakeKubeRay
from support.operator_env import (JOBS, NS, RAYJOBS, REWARD, SPEC, conditions, job_status, kuberay, reasons, rlhfjob,
                                  wait_phase)


def test_create_makes_the_snapshot_configmap_and_rayjob_owned_by_the_job(kube, operator):
    operator.start()
    job = kube.create(rlhfjob())
    rayjob = kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    status = wait_phase(kube, "Pending", "RayJobCreated")
    uid = job["metadata"]["uid"]
    config_maps = kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo")
    assert [cm["metadata"]["name"] for cm in config_maps] == [f"demo-code-{status['codeHash']}"]
    for obj in [rayjob, *config_maps]:
        owner, = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("RLHFJob", "demo", uid, True)
    code, = config_maps
    assert code["data"]["reward_func.py"] == REWARD and "worker.json" in code["data"]
    assert status["rayJobName"] == "demo" and status["observedGeneration"] == job["metadata"]["generation"]
    assert conditions(status)["Validated"]["status"] == "True"
    assert rayjob_errors({k: v for k, v in rayjob.items() if k != "status"}) == []
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "example/workers:test"
    kube.wait_for(lambda: "RayJobCreated" in reasons(kube))
    # The operator writes status only: no finalizer, no annotations, spec untouched.
    stored = kube.get(JOBS, "demo", NS)
    assert stored["spec"] == job["spec"]
    assert not stored["metadata"].get("finalizers")
    assert not any(k.startswith("kopf.zalando.org") for k in stored["metadata"].get("annotations") or {})


def test_success_sequence_through_kuberays_preconditions(kube, operator):
    """KubeRay's own path: the cluster and its head Service made from the rendered head
    container, the dashboard URL read from that Service, the submitter created, then Running."""
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    fake = FakeKubeRay(kube, NS)
    assert fake.run_to("demo", "Running", max_passes=3) == "Initializing"  # pods not running yet
    status = wait_phase(kube, "Provisioning")
    cluster = fake.rayjob("demo")["status"]["rayClusterName"]
    assert cluster.startswith("demo-") and len(cluster) == len("demo-") + 5
    fake.cluster_ready("demo")
    assert fake.run_to("demo", "Running") == "Running", fake.last_error
    fake.ray_job("demo", "PENDING")
    wait_phase(kube, "Provisioning", "JobPending")
    fake.ray_job("demo", "RUNNING")
    status = wait_phase(kube, "Running")
    assert status["rayClusterName"] == cluster
    assert status["dashboardURL"] == f"{cluster}-head-svc.{NS}.svc.cluster.local:8265"
    submitter = kube.get("batch/v1/jobs", "demo", NS)["spec"]["template"]["spec"]["containers"][0]
    assert "-- python -m rlhf_workers --config /etc/rlhf/config/worker.json ;" in submitter["args"][0]
    assert conditions(status)["Running"]["status"] == "True" and status["startTime"]
    fake.reconcile("demo")  # Running: KubeRay adds the RayJob's own head Service
    assert kube.get("v1/services", "demo-head-svc", NS) is not None
    fake.ray_job("demo", "SUCCEEDED")
    status = wait_phase(kube, "Succeeded", "Completed")
    assert conditions(status)["Succeeded"]["status"] == "True" and conditions(status)["Running"]["status"] == "False"
    assert status["completionTime"] and status["attempts"] == 1
    kube.wait_for(lambda: {"ClusterProvisioning", "JobPending", "Training", "Completed"} <= set(reasons(kube)))


def test_a_head_without_a_dashboard_port_never_leaves_initializing(kube, operator):
    """What every job did before the head declared KubeRay's ports: KubeRay finds no
    ``dashboard`` port on the head Service, never creates the submitter, and the job waits."""
    operator.start()
    kube.create(rlhfjob())
    rayjob = kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    kube.patch(RAYJOBS, "demo", {"spec": {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": [
        {**head, "ports": [p for p in head["ports"] if p["name"] == "rlhf-progress"]}]}}}}}}, NS)
    fake = FakeKubeRay(kube, NS)
    fake.run_to("demo", "Running", max_passes=2)
    fake.cluster_ready("demo")
    assert fake.run_to("demo", "Running", max_passes=5) == "Initializing"
    assert fake.last_error == "dashboard port is not found"
    assert kube.get("batch/v1/jobs", "demo", NS) is None
    assert not fake.rayjob("demo")["status"].get("dashboardURL")
    assert wait_phase(kube, "Provisioning")["reason"] == "ClusterProvisioning"


@pytest.mark.parametrize("failure, reason", [
    ({"jobStatus": "FAILED", "reason": "AppFailed", "message": "job failed: reward_func raised"}, "AppFailed"),
    ({"jobStatus": "RUNNING", "reason": "DeadlineExceeded", "message": "activeDeadlineSeconds exceeded"}, "DeadlineExceeded"),
    ({"reason": "SubmissionFailed", "message": "submitter pod failed"}, "SubmissionFailed"),
])
def test_failures_are_terminal_with_kuberay_reason(kube, running_job, failure, reason):
    spec = rlhfjob()["spec"]
    spec["backoffLimit"] = 0
    running_job(spec)
    kuberay(kube, jobDeploymentStatus="Failed", failed=1, **failure)
    status = wait_phase(kube, "Failed", reason)
    assert failure["message"] in status["message"]
    failed = conditions(status)["Failed"]
    assert failed["status"] == "True" and failed["reason"] == reason
    kube.wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == reason
                              for e in kube.events(NS, involved_name="demo", involved_kind="RLHFJob")))


def test_retry_then_success(kube, running_job):
    running_job()  # backoffLimit: 1
    # KubeRay writes Retrying (not Failed) when backoffLimit leaves a retry, then New, then Initializing.
    kuberay(kube, jobDeploymentStatus="Retrying", jobStatus="FAILED", reason="AppFailed", message="OOM", failed=1)
    status = wait_phase(kube, "Retrying")
    assert "OOM" in status["message"]
    kuberay(kube, jobDeploymentStatus="New", jobStatus="", reason="", message="")
    kuberay(kube, jobDeploymentStatus="Initializing")
    wait_phase(kube, "Provisioning")
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(kube, "Running")
    kuberay(kube, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    status = wait_phase(kube, "Succeeded")
    assert status["attempts"] == 2


def test_kuberay_validation_failure(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    kuberay(kube, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed", message="invalid rayClusterSpec")
    status = wait_phase(kube, "Failed", "ValidationFailed")
    assert "invalid rayClusterSpec" in status["message"]


def test_suspend_and_resume(kube, running_job):
    running_job()
    kube.patch(JOBS, "demo", {"spec": {"suspend": True}}, NS)
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS)["spec"].get("suspend") is True)
    kuberay(kube, jobDeploymentStatus="Suspending")
    kuberay(kube, jobDeploymentStatus="Suspended", jobStatus="")
    status = wait_phase(kube, "Suspended", "Suspended")
    assert conditions(status)["Suspended"]["status"] == "True"
    kube.patch(JOBS, "demo", {"spec": {"suspend": False}}, NS)
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS)["spec"].get("suspend") is False)
    kuberay(kube, jobDeploymentStatus="New")
    kuberay(kube, jobDeploymentStatus="Initializing")
    status = wait_phase(kube, "Provisioning")
    assert conditions(status)["Suspended"]["status"] == "False"
    kube.wait_for(lambda: {"Suspending", "Resuming"} <= set(reasons(kube)))
    assert job_status(kube)["observedGeneration"] == kube.get(JOBS, "demo", NS)["metadata"]["generation"]


def test_kueue_queued_job_starts_suspended_and_kueue_admission_is_respected(kube, operator):
    operator.start()
    kube.create(rlhfjob(labels={"kueue.x-k8s.io/queue-name": "gpu-queue"}))
    rayjob = kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    assert rayjob["spec"]["suspend"] is True
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    kuberay(kube, jobDeploymentStatus="Initializing")  # KubeRay checks suspend only from here
    kuberay(kube, jobDeploymentStatus="Suspending")
    kuberay(kube, jobDeploymentStatus="Suspended")
    wait_phase(kube, "Suspended", "WaitingForAdmission")
    assert "ClusterProvisioning" not in reasons(kube)  # a queued job never claimed to be starting
    # Kueue admits: it un-suspends the RayJob itself.
    kube.patch(RAYJOBS, "demo", {"spec": {"suspend": False}}, NS)
    kuberay(kube, jobDeploymentStatus="New")
    kuberay(kube, jobDeploymentStatus="Initializing")
    wait_phase(kube, "Provisioning")
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(kube, "Running")
    operator.restart()  # a resumed operator must not fight Kueue either
    kuberay(kube, jobStatus="RUNNING", message="still running")
    kube.wait_for(lambda: job_status(kube).get("message") != "" )
    assert kube.get(RAYJOBS, "demo", NS)["spec"]["suspend"] is False


def test_invalid_spec_fails_with_a_condition_and_no_rayjob(kube, operator):
    operator.start()
    bad = rlhfjob()
    bad["spec"]["algorithm"]["nSamplesPerPrompt"] = 1
    bad["spec"]["rollout"] = {"temperatur": 0.7}
    kube.create(bad)
    status = wait_phase(kube, "Failed", "ValidationFailed")
    validated = conditions(status)["Validated"]
    assert validated["status"] == "False"
    assert "spec.algorithm.nSamplesPerPrompt" in validated["message"] or "spec.rollout.temperatur" in validated["message"]
    assert "Traceback" not in validated["message"]
    assert kube.get(RAYJOBS, "demo", NS) is None
    assert kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo") == []
    kube.wait_for(lambda: "ValidationFailed" in reasons(kube))


def test_missing_configmap_waits_then_launches_when_it_appears(kube, operator):
    operator.start()
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"configMapRef": {"name": "my-reward", "key": "reward.py"}}}
    kube.create(rlhfjob(spec=spec))
    status = wait_phase(kube, "Pending", "CodeNotFound")
    assert "ConfigMap 'my-reward' not found" in status["message"]
    assert conditions(status)["Validated"]["status"] == "False"
    assert kube.get(RAYJOBS, "demo", NS) is None
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "my-reward", "namespace": NS},
                 "data": {"other.py": "x = 1\n"}})
    kube.wait_for(lambda: "has no key 'reward.py'" in job_status(kube).get("message", ""))
    kube.patch("v1/configmaps", "my-reward", {"data": {"reward.py": REWARD}}, NS)
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    status = wait_phase(kube, "Pending", "RayJobCreated")
    snapshot = kube.get("v1/configmaps", f"demo-code-{status['codeHash']}", NS)
    assert snapshot["data"]["reward_func.py"] == REWARD and snapshot["immutable"] is True


def test_configmap_code_that_does_not_define_reward_func_fails(kube, operator):
    operator.start()
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rw", "namespace": NS},
                 "data": {"reward_func.py": "def reward(q):\n    return 1\n"}})
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"configMapRef": {"name": "rw"}}}
    kube.create(rlhfjob(spec=spec))
    status = wait_phase(kube, "Failed", "ValidationFailed")
    assert "must define reward_func" in status["message"]
    assert kube.get(RAYJOBS, "demo", NS) is None


def test_snapshot_is_kept_when_the_user_edits_the_configmap(kube, operator):
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rw", "namespace": NS},
                 "data": {"reward_func.py": REWARD}})
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"configMapRef": {"name": "rw"}}}
    operator.start()
    kube.create(rlhfjob(spec=spec))
    first = wait_phase(kube, "Pending", "RayJobCreated")["codeHash"]
    kube.patch("v1/configmaps", "rw", {"data": {"reward_func.py": REWARD + "# edited\n"}}, NS)
    operator.restart()
    kube.wait_for(lambda: operator.metrics.phases.get((NS, "demo")))
    code_maps = [cm for cm in kube.list("v1/configmaps", NS) if cm["metadata"]["name"].startswith("demo-code-")]
    assert [cm["metadata"]["name"] for cm in code_maps] == [f"demo-code-{first}"]


def test_immutable_edit_is_refused_with_an_event(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    before = kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    kube.patch(JOBS, "demo", {"spec": {"model": {"path": "/models/other"}}}, NS)
    kube.wait_for(lambda: "SpecImmutable" in reasons(kube))
    kube.wait_for(lambda: conditions(job_status(kube))["Validated"]["reason"] == "SpecImmutable")
    assert kube.get(RAYJOBS, "demo", NS)["spec"] == before["spec"]


def test_existing_rayjob_not_owned_by_the_job_is_a_conflict(kube, operator):
    kube.create({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "demo", "namespace": NS},
                 "spec": {"entrypoint": "python other.py"}})
    operator.start()
    kube.create(rlhfjob())
    status = wait_phase(kube, "Failed", "ChildConflict")
    assert "not owned by this RLHFJob" in status["message"]
    assert kube.get(RAYJOBS, "demo", NS)["spec"]["entrypoint"] == "python other.py"


def test_deleting_the_job_leaves_nothing_behind(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    assert kube.delete(JOBS, "demo", NS) is True  # no finalizer holds it
    kube.collect_garbage()  # what the cluster's garbage collector does with ownerReferences
    assert kube.get(RAYJOBS, "demo", NS) is None
    assert kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo") == []


def test_deleted_rayjob_marks_a_running_job_failed(kube, running_job):
    running_job()
    kube.delete(RAYJOBS, "demo", NS)
    status = wait_phase(kube, "Failed", "RayJobMissing")
    assert "was deleted" in status["message"]


# ----------------------------------------------------------------- restarts


def children(kube):
    return (sorted(o["metadata"]["name"] for o in kube.list(RAYJOBS, NS)),
            sorted(o["metadata"]["name"] for o in kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo")))


def test_restart_after_launch_makes_no_duplicates(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    wait_phase(kube, "Pending", "RayJobCreated")
    before = children(kube)
    operator.restart()
    operator.restart()
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(kube, "Running")
    assert children(kube) == before and len(before[0]) == 1 and len(before[1]) == 1


def test_restart_after_partial_creation_completes_the_children(kube, operator):
    """Operator died after creating the snapshot ConfigMap only: the resumed one adopts it and creates the RayJob."""
    from rlhf_operator.render import render
    from rlhf_api.validation import parse_job

    job = kube.create(rlhfjob())
    parsed = parse_job(job)
    code_cm = render(parsed)[0]
    kube.create(code_cm)
    operator.start()
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    wait_phase(kube, "Pending", "RayJobCreated")
    rayjobs, config_maps = children(kube)
    assert rayjobs == ["demo"] and config_maps == [code_cm["metadata"]["name"]]


def test_kuberay_reporting_the_instant_the_rayjob_exists_is_not_overwritten_by_launch(kube, operator):
    """KubeRay may report before launch's own status write lands; the mirrored phase must survive it."""
    import threading

    def play_kuberay_at_once():
        while kube.get(RAYJOBS, "demo", NS) is None:
            time.sleep(0.0005)
        kuberay(kube, jobDeploymentStatus="Initializing", jobStatus="")
        kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")

    operator.start()
    player = threading.Thread(target=play_kuberay_at_once, daemon=True)
    player.start()
    kube.create(rlhfjob())
    player.join(10)
    wait_phase(kube, "Running")
    time.sleep(0.5)  # launch's write would have landed by now
    status = job_status(kube)
    assert status["phase"] == "Running" and status["rayJobName"] == "demo"
    assert conditions(status)["Validated"]["status"] == "True" and conditions(status)["Running"]["status"] == "True"


def test_rayjob_state_reported_before_launch_recorded_it_is_mirrored_after(kube, operator):
    """The operator died between creating the RayJob and recording it, and KubeRay moved on meanwhile:
    the mirror waits for the resumed launch to record rayJobName, then mirrors, and nothing is lost."""
    from rlhf_operator.render import render
    from rlhf_api.validation import parse_job

    job = kube.create(rlhfjob())
    for obj in render(parse_job(job)):
        kube.create(obj)
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-raycluster-x")
    operator.start()
    status = wait_phase(kube, "Running")
    assert status["rayJobName"] == "demo" and status["codeHash"]
    assert conditions(status)["Validated"]["status"] == "True" and conditions(status)["Running"]["status"] == "True"
    kube.wait_for(lambda: "Training" in reasons(kube))
    assert children(kube) == (["demo"], [render(parse_job(job))[0]["metadata"]["name"]])


def test_status_changes_while_the_operator_is_down_are_picked_up(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    wait_phase(kube, "Pending")
    operator.stop()
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kuberay(kube, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    operator.start()
    wait_phase(kube, "Succeeded")
    assert children(kube)[0] == ["demo"]
    # The resumed launch must not overwrite what the mirror wrote.
    kube.wait_for(lambda: conditions(job_status(kube)).get("Validated", {}).get("status") == "True")
    final = conditions(job_status(kube))
    assert final["Succeeded"]["status"] == "True" and final.get("Running", {}).get("status") != "True"
    assert job_status(kube)["phase"] == "Succeeded"


def test_finished_job_is_not_relaunched_after_its_rayjob_is_gone(kube, operator):
    operator.start()
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    kuberay(kube, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1)
    wait_phase(kube, "Succeeded")
    operator.stop()
    kube.delete(RAYJOBS, "demo", NS)  # e.g. KubeRay's DELETE_RAYJOB_CR_AFTER_JOB_FINISHES
    operator.start()
    kube.wait_for(lambda: operator.metrics.phases.get((NS, "demo")) == "Succeeded")
    assert kube.get(RAYJOBS, "demo", NS) is None
    assert job_status(kube)["phase"] == "Succeeded"


# ----------------------------------------------------------------- progress


def beat(seconds_ago=0):
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_progress_is_polled_into_status_and_a_stale_heartbeat_stalls(kube, operator, progress_server):
    operator.start(progress_url=progress_server.url, stall_seconds=3)
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
    progress_server.report = {"state": "training", "step": 3, "totalSteps": 10, "rewardMean": 0.42, "scoreMean": 0.5,
                              "kl": 0.01, "heartbeat": beat(),
                              "lastCheckpoint": {"step": 2, "path": "/checkpoints/demo/step-2", "time": beat()}}
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-abc")
    status = kube.wait_for(lambda: job_status(kube) if (job_status(kube).get("progress") or {}).get("step") == 3 else None)
    assert status["progress"]["totalSteps"] == 10 and status["progress"]["rewardMean"] == 0.42
    assert status["lastCheckpoint"] == "/checkpoints/demo/step-2"
    assert "Stalled" not in conditions(status)
    # The driver stops beating: its last heartbeat ages past the 3 s limit.
    progress_server.report = {**progress_server.report, "step": 4}
    kube.wait_for(lambda: conditions(job_status(kube)).get("Stalled", {}).get("status") == "True")
    assert "no progress heartbeat" in conditions(job_status(kube))["Stalled"]["message"]
    progress_server.report = {**progress_server.report, "step": 5, "heartbeat": beat(-60)}  # fresh (clock skew ok)
    kube.wait_for(lambda: conditions(job_status(kube)).get("Stalled", {}).get("status") == "False")
    assert job_status(kube)["progress"]["step"] == 5
    kube.wait_for(lambda: {"Checkpointed", "Stalled", "Resumed"} <= set(reasons(kube)))
    assert not kube.get(JOBS, "demo", NS)["metadata"].get("finalizers")  # polling holds no finalizer


def test_unreachable_progress_endpoint_stalls_after_the_limit(kube, operator, running_job):
    running_job(progress_url="http://127.0.0.1:9/progress", stall_seconds=1)
    kube.wait_for(lambda: conditions(job_status(kube)).get("Stalled", {}).get("status") == "True", timeout=15)
    assert operator.metrics.progress_failures > 0


def test_network_policy_is_created_owned_by_the_job_when_asked(kube, operator):
    operator.start()
    spec = copy.deepcopy(SPEC)
    spec.setdefault("cluster", {})["networkPolicy"] = True
    job = kube.create(rlhfjob("isolated", spec))
    kube.wait_for(lambda: kube.get(RAYJOBS, "isolated", NS))
    policy = kube.get("networking.k8s.io/v1/networkpolicies", "isolated-ingress", NS)
    owner, = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("RLHFJob", job["metadata"]["uid"])
    assert policy["spec"]["podSelector"] == {"matchLabels": {"rlhf.dev/job-name": "isolated"}}
    created = kube.wait_for(lambda: [e["message"] for e in kube.list("v1/events", NS)
                                     if e.get("reason") == "RayJobCreated" and "isolated" in e.get("message", "")])
    assert "NetworkPolicy isolated-ingress" in created[0], created


def test_code_configmap_the_operator_may_not_read_is_said_and_retried(kube, operator):
    operator.start()
    rule = kube.faults.add("status", "GET", r"/configmaps/my-reward$", code=403)
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "my-reward", "namespace": NS},
                 "data": {"reward.py": REWARD}})
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"configMapRef": {"name": "my-reward", "key": "reward.py"}}}
    kube.create(rlhfjob(spec=spec))
    status = wait_phase(kube, "Pending", "CodeNotFound")
    assert "the operator may not read ConfigMap 'my-reward'" in status["message"] and "403" in status["message"]
    assert kube.get(RAYJOBS, "demo", NS) is None
    kube.faults.clear()  # RBAC fixed: the next look succeeds
    assert rule.fired >= 1
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS), timeout=30)
