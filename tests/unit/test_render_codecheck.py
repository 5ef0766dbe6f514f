"""The code-check pod, rendered purely, and the reading of its verdict from the pod status."""

import json
from datetime import datetime, timedelta, timezone

from k8s_schemas import core_errors
from rlhf_api.podsecurity import restricted_violations
from rlhf_api.validation import parse_job
from rlhf_operator.render import RenderOptions, render
from rlhf_operator.render_codecheck import codecheck_pod, pod_name, verdict, wanted
from rlhf_operator.render import Snapshot
from support.jobs import job

REWARD = "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def parsed(**changes):
    doc = job(**changes)
    doc["metadata"]["uid"] = "0000-1111"
    return parse_job(doc)


def pod_for(j):
    config_map = render(j, {}, RenderOptions(default_image="example/workers:1"))[0]
    files = tuple(sorted(k for k in config_map["data"] if k != "worker.json"))
    digest = (config_map["metadata"].get("annotations") or {}).get("rlhf.dev/code-hash")
    return codecheck_pod(j, Snapshot(config_map["metadata"]["name"], files), digest,
                         RenderOptions(default_image="example/workers:1")), config_map


GPU_JOB = dict(reward={"function": {"inline": REWARD}},
               cluster={"trainer": {"replicas": 2, "gpus": 4, "nodeSelector": {"gpu": "h100"},
                                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
                        "env": [{"name": "PLAIN", "value": "1"},
                                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                        "volumes": [{"name": "data", "mountPath": "/data",
                                     "source": {"persistentVolumeClaim": {"claimName": "prompts"}}}]},
               logging={"wandb": {"project": "p", "apiKeySecretRef": {"name": "wandb", "key": "key"}}})


def test_the_pod_is_valid_core_v1_and_restricted():
    pod, _ = pod_for(parsed(**GPU_JOB))
    assert core_errors(pod) == []
    assert restricted_violations(pod["spec"]) == []


def test_the_pod_runs_the_check_cpu_only_without_secrets_with_the_jobs_code_and_data():
    pod, config_map = pod_for(parsed(**GPU_JOB))
    spec, [container] = pod["spec"], pod["spec"]["containers"]
    assert container["command"][:4] == ["python", "-m", "rlhf_workers", "--check-code"]
    assert container["image"] == "example/workers:1"
    resources = container["resources"]
    # what the reward's sandbox may use (its default memoryMB here), and 1 GiB for the check process
    sandbox_mib = parsed(**GPU_JOB).spec.reward.sandbox.memory_mb
    assert resources["limits"] == {"cpu": "1", "memory": f"{sandbox_mib + 1024}Mi"}
    assert resources["requests"] == resources["limits"]
    assert not any("gpu" in key for key in json.dumps(resources).lower().split('"'))
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert [e["name"] for e in container["env"] if "valueFrom" in e] == []
    assert "PLAIN" in [e["name"] for e in container["env"]] and "WANDB_API_KEY" not in json.dumps(container)
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/rlhf/config"] == "rlhf-config" and mounts["/etc/rlhf/code"] == "rlhf-code"
    assert mounts["/data"] == "data" and "/dev/shm" not in mounts and "checkpoints" not in mounts.values()
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["rlhf-code"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"][-2:] == ["--result-file", "/dev/termination-log"]


def test_the_pod_is_owned_by_the_job_and_named_by_the_code():
    pod, config_map = pod_for(parsed(**GPU_JOB))
    digest = config_map["metadata"]["annotations"]["rlhf.dev/code-hash"]
    assert pod["metadata"]["name"] == pod_name("demo", digest) == f"demo-codecheck-{digest}"
    [owner] = pod["metadata"]["ownerReferences"]
    assert owner["kind"] == "RLHFJob" and owner["uid"] == "0000-1111" and owner["controller"] is True
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "codecheck"


def test_a_custom_image_is_used_for_the_check():
    pod, _ = pod_for(parsed(reward={"function": {"inline": REWARD}}, cluster={"image": "reg.example.com/w:2"}))
    assert pod["spec"]["containers"][0]["image"] == "reg.example.com/w:2"


def test_which_jobs_get_the_check():
    assert wanted(parsed(reward={"function": {"inline": REWARD}}).spec)
    assert not wanted(parsed(reward={"function": {"inline": REWARD}}, preflight=False).spec)
    assert not wanted(parsed(reward={"remote": {"url": "http://rm:8000/score"}}).spec)


def pod_status(phase, terminated=None, waiting=None, created=NOW, reason=None):
    state = {"terminated": terminated} if terminated else {"waiting": waiting} if waiting else {}
    status = {"phase": phase, "containerStatuses": [{"name": "codecheck", "state": state}]}
    if reason:
        status["reason"] = reason
    return {"metadata": {"creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")}, "status": status}


def test_the_verdict_comes_from_the_termination_message():
    ok = json.dumps({"ok": True, "message": "reward_func passed on 4 rows"})
    assert verdict(pod_status("Succeeded", {"exitCode": 0, "message": ok}), NOW, 60).state == "passed"
    bad = json.dumps({"ok": False, "message": "reward_func raised KeyError: 'x' at reward_func.py, line 3"})
    seen = verdict(pod_status("Failed", {"exitCode": 1, "message": bad}), NOW, 60)
    assert seen.state == "failed" and seen.message == "reward_func raised KeyError: 'x' at reward_func.py, line 3"


def test_a_check_that_died_before_writing_its_verdict_is_failed_with_its_log_tail():
    tail = "Traceback (most recent call last):\n  ...\nSegmentation fault"
    seen = verdict(pod_status("Failed", {"exitCode": 139, "message": tail}), NOW, 60)
    assert seen.state == "failed" and "Segmentation fault" in seen.message
    seen = verdict(pod_status("Failed", {"exitCode": 137, "reason": "OOMKilled"}), NOW, 60)
    assert "OOMKilled" in seen.message
    seen = verdict(pod_status("Failed", reason="DeadlineExceeded"), NOW, 60)
    assert "did not finish within" in seen.message


def test_a_pod_that_never_runs_fails_after_the_wait_naming_why():
    waiting = {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
    assert verdict(pod_status("Pending", waiting=waiting), NOW + timedelta(seconds=30), 60).state == "running"
    seen = verdict(pod_status("Pending", waiting=waiting), NOW + timedelta(seconds=61), 60)
    assert seen.state == "failed" and "ImagePullBackOff" in seen.message and "60 s" in seen.message


def test_the_pods_memory_follows_the_reward_or_agent_sandbox_limit():
    def limits(sandbox):
        pod, _ = pod_for(parsed(reward={"function": {"inline": REWARD}, "sandbox": sandbox}))
        return pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limits({"memoryMB": 512}) == "2048Mi"  # never under 2 GiB
    assert limits({"memoryMB": 16384}) == "17408Mi"
    assert limits({"memoryMB": 0}) == "8Gi"  # a reward without a memory limit of its own
    agent = "class AgentInstance:\n    pass\n"
    pod, _ = pod_for(parsed(reward=None, agent={"inline": agent, "sandbox": {"memoryMB": 3072}}))
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "4096Mi"  # an agent's, likewise


def test_the_pod_runs_under_the_reward_runtime_class_when_the_job_names_one():
    pod, _ = pod_for(parsed(reward={"function": {"inline": REWARD}}, cluster={"rewardRuntimeClassName": "gvisor"}))
    assert pod["spec"]["runtimeClassName"] == "gvisor" and core_errors(pod) == []
    pod, _ = pod_for(parsed(reward={"function": {"inline": REWARD}}))
    assert "runtimeClassName" not in pod["spec"]
