"""Rendering: spec in, manifests out — valid against the real schemas, restricted, deterministic."""

import copy
import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from k8s_schemas import core_errors, pod_from_template, rayjob_errors
from rlhf_api.podsecurity import pod_specs, restricted_violations
from rlhf_operator.render import MissingCode, RenderOptions, code_refs, quantity_value, render
from rlhf_api.validation import InvalidJob, parse_job
from rlhf_api.workerconfig import WorkerConfig
from support.jobs import REWARD_SOURCE, job

ROOT = Path(__file__).resolve().parents[2]
UID = "7f3c2a4e-1111-2222-3333-444455556666"


def rendered(doc, code=None, options=RenderOptions()):
    parsed = parse_job(doc)
    parsed.metadata.uid = UID
    return render(parsed, code or {}, options)


def by_kind(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_renders_one_snapshot_configmap_then_the_rayjob():
    objects = rendered(job())
    assert [o["kind"] for o in objects] == ["ConfigMap", "RayJob"]
    snapshot, rayjob = objects
    digest = snapshot["metadata"]["annotations"]["rlhf.dev/code-hash"]
    assert snapshot["metadata"]["name"] == f"demo-code-{digest}" and snapshot["immutable"] is True
    assert sorted(snapshot["data"]) == ["reward_func.py", "worker.json"]
    assert snapshot["data"]["reward_func.py"] == REWARD_SOURCE
    assert rayjob["metadata"]["name"] == "demo" and rayjob["metadata"]["namespace"] == "team-a"


def test_the_snapshot_is_mounted_as_config_and_code_directories():
    snapshot, rayjob = rendered(job())
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["rlhf-config"]["configMap"] == {"name": snapshot["metadata"]["name"],
                                                    "items": [{"key": "worker.json", "path": "worker.json"}]}
    assert volumes["rlhf-code"]["configMap"] == {"name": snapshot["metadata"]["name"],
                                                  "items": [{"key": "reward_func.py", "path": "reward_func.py"}]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["rlhf-config"] == "/etc/rlhf/config" and mounts["rlhf-code"] == "/etc/rlhf/code"


def test_a_job_without_code_gets_a_config_only_snapshot():
    doc = job(reward={"remote": {"url": "http://rm.team-a.svc:8000/score"}})
    snapshot, rayjob = rendered(doc)
    assert snapshot["metadata"]["name"] == "demo-config" and list(snapshot["data"]) == ["worker.json"]
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "rlhf-code" not in {v["name"] for v in pod["volumes"]}
    assert "rlhf.dev/code-hash" not in (rayjob["metadata"].get("annotations") or {})


def test_every_object_is_owned_by_the_job_and_labelled():
    for obj in rendered(job()):
        owner, = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "name": "demo", "uid": UID,
                         "controller": True}
        labels = obj["metadata"]["labels"]
        assert labels["rlhf.dev/job-name"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "rlhf-operator"
        assert "app.kubernetes.io/instance" not in labels  # Argo CD label tracking would claim it


def test_code_snapshot_name_follows_content():
    first = rendered(job())[0]["metadata"]["name"]
    again = rendered(job())[0]["metadata"]["name"]
    other_source = REWARD_SOURCE + "# changed\n"
    changed = rendered(job(reward={"function": {"inline": other_source}}))[0]["metadata"]["name"]
    assert first == again != changed


def test_configmap_code_is_snapshotted_from_the_supplied_source():
    doc = job(reward={"function": {"configMapRef": {"name": "my-reward"}}})
    refs = code_refs(parse_job(doc).spec)
    assert [(r.config_map, r.key, r.file) for r in refs] == [("my-reward", "reward_func.py", "reward_func.py")]
    with pytest.raises(MissingCode, match="spec.reward.function.configMapRef"):
        rendered(doc)
    code = rendered(doc, {"reward_func.py": REWARD_SOURCE})[0]
    assert code["data"]["reward_func.py"] == REWARD_SOURCE


def test_path_code_is_not_snapshotted_and_the_worker_reads_the_path():
    objects = rendered(job(reward={"function": {"path": "/opt/rewards/math.py"}}))
    assert [o["kind"] for o in objects] == ["ConfigMap", "RayJob"]
    config = WorkerConfig.model_validate(json.loads(objects[0]["data"]["worker.json"]))
    assert config.reward_code_path == "/opt/rewards/math.py"


def test_worker_config_is_the_same_spec_model_pointing_at_the_mounted_snapshot():
    doc = job(algorithm={"advantageEstimator": "rloo", "nSamplesPerPrompt": 4})
    config_map = rendered(doc)[0]
    config = WorkerConfig.model_validate(json.loads(config_map["data"]["worker.json"]))
    assert config.spec.algorithm.advantage_estimator == "rloo"
    assert config.reward_code_path == "/etc/rlhf/code/reward_func.py"
    assert config.spec.reward.function.path == "/etc/rlhf/code/reward_func.py"
    assert config.spec.reward.function.inline is None  # one copy of the code, in the snapshot
    assert config.output_dir == "/checkpoints" and config.code_hash


def test_rayjob_maps_lifecycle_fields():
    spec = rendered(job(backoffLimit=3, activeDeadlineSeconds=7200, ttlSecondsAfterFinished=60, suspend=True))[-1]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"], spec["suspend"]) == (3, 7200, 60, True)
    assert spec["entrypoint"] == "python -m rlhf_workers --config /etc/rlhf/config/worker.json"


def test_kueue_queue_label_passes_through_and_starts_suspended():
    doc = job()
    doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a-gpus", "unrelated": "x"}
    rayjob = rendered(doc)[-1]
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert "unrelated" not in rayjob["metadata"]["labels"]
    assert rayjob["spec"]["suspend"] is True
    assert rendered(job())[-1]["spec"]["suspend"] is False


def test_groups_get_resources_gpus_and_placement():
    doc = job(cluster={
        "head": {"cpu": 2, "memory": "8Gi"},
        "rollout": {"replicas": 2, "gpus": 1, "nodeSelector": {"gpu": "h100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "trainer": {"replicas": 4, "gpus": 8, "memory": "512Gi"},
        "image": "registry.example/rlhf-workers:1.2",
        "imagePullSecrets": ["regcred"],
    })
    cluster = rendered(doc)[-1]["spec"]["rayClusterSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert groups["rollout"]["replicas"] == groups["rollout"]["minReplicas"] == groups["rollout"]["maxReplicas"] == 2
    rollout_pod = groups["rollout"]["template"]["spec"]
    assert rollout_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert rollout_pod["nodeSelector"] == {"gpu": "h100"}
    assert rollout_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert rollout_pod["imagePullSecrets"] == [{"name": "regcred"}]
    trainer = groups["trainer"]["template"]["spec"]["containers"][0]["resources"]
    # A GPU group without cpu gets a CPU limit (KubeRay's num-cpus comes from it); requests equal limits.
    assert trainer["limits"] == trainer["requests"] == {"cpu": "32", "memory": "512Gi", "nvidia.com/gpu": "8"}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.example/rlhf-workers:1.2"
    assert head["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert {"name": "rlhf-progress", "containerPort": 8270, "protocol": "TCP"} in head["ports"]


def test_head_declares_kuberays_ports_by_their_names():
    head = rendered(job())[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {
        "gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080, "rlhf-progress": 8270}


def test_every_pod_gets_default_resources_and_a_bounded_shm():
    doc = job(cluster={"placement": "distributed", "rollout": {"replicas": 1, "gpus": 2},
                       "trainer": {"replicas": 1, "memory": "3G"}})
    cluster = rendered(doc)[-1]["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"],
            **{g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}}
    limits = {name: pod["containers"][0]["resources"]["limits"] for name, pod in pods.items()}
    assert limits == {"head": {"cpu": "2", "memory": "8Gi"},
                      "rollout": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                      "trainer": {"cpu": "2", "memory": "3G"}}
    shm = {name: next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"] for name, pod in pods.items()}
    assert shm == {"head": {"medium": "Memory", "sizeLimit": "4096Mi"},
                   "rollout": {"medium": "Memory", "sizeLimit": "32768Mi"},
                   "trainer": {"medium": "Memory", "sizeLimit": "1500000000"}}


@pytest.mark.parametrize("quantity, value", [
    ("2", 2), ("500m", 0.5), ("16Gi", 16 * 2**30), ("3G", 3 * 10**9), ("1e9", 10**9), ("1.5Ki", 1536), ("+4", 4)])
def test_quantity_value_reads_kubernetes_quantities(quantity, value):
    assert quantity_value(quantity) == Decimal(str(value))


def test_colocated_placement_has_no_separate_rollout_group():
    cluster = rendered(job(cluster={"placement": "colocated", "trainer": {"replicas": 2, "gpus": 8}}))[-1]["spec"]["rayClusterSpec"]
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["trainer"]


def test_default_image_comes_from_operator_options():
    rayjob = rendered(job(), options=RenderOptions(default_image="example/workers:dev"))[-1]
    assert rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "example/workers:dev"


def test_code_and_config_are_mounted_read_only_and_checkpoints_from_the_volume():
    doc = job(checkpoint={"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}})
    pod = rendered(doc)[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/rlhf/code"]["readOnly"] and mounts["/etc/rlhf/config"]["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    assert mounts["/ckpt"]["name"] == "checkpoints"


def test_secrets_come_in_as_env_from_secret_refs_and_never_into_configmaps():
    doc = job(reward={"remote": {"url": "https://rm.example/score", "tokenSecretRef": {"name": "rm-token", "key": "token"}}},
              logging={"wandb": {"project": "p", "apiKeySecretRef": {"name": "wandb", "key": "api-key"}}})
    objects = rendered(doc)
    env = {e["name"]: e for e in objects[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert env["RLHF_REWARD_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "rm-token", "key": "token"}}
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            assert "valueFrom" not in yaml.safe_dump(obj)


def _all_examples():
    for path in sorted((ROOT / "examples").glob("**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RLHFJob":
                yield pytest.param(path, doc, id=f"{path.parent.name}/{path.name}")


def _render_example(path, doc):
    parsed = parse_job(doc)
    parsed.metadata.uid = UID
    parsed.metadata.namespace = "default"
    refs = code_refs(parsed.spec)
    code = {r.file: (path.parent / r.key).read_text() for r in refs}
    return render(parsed, code)


@pytest.mark.parametrize("path, doc", list(_all_examples()))
def test_examples_render_to_objects_valid_against_kuberay_and_core_schemas(path, doc):
    objects = _render_example(path, doc)
    for obj in objects:
        if obj["kind"] == "RayJob":
            assert rayjob_errors(obj) == []
        else:
            assert core_errors(obj) == []
    rayjob = objects[-1]
    for where, pod in pod_specs(rayjob):
        template = {"metadata": {"labels": {}}, "spec": pod}
        assert core_errors(pod_from_template(template, f"{where}".replace("[", "-").replace("]", "").lower())) == [], where


@pytest.mark.parametrize("path, doc", list(_all_examples()))
def test_every_rendered_pod_passes_the_restricted_pod_security_standard(path, doc):
    rayjob = _render_example(path, doc)[-1]
    found = list(pod_specs(rayjob))
    assert {w for w, _ in found} >= {"head", "submitter"}
    for where, pod in found:
        assert restricted_violations(pod) == [], where
        assert pod["automountServiceAccountToken"] is False


def test_restricted_checker_catches_violations():
    pod = {"containers": [{"name": "c", "securityContext": {"privileged": True}}], "hostNetwork": True,
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    problems = "\n".join(restricted_violations(pod))
    for expected in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "drop must include ALL",
                     "runAsNonRoot", "seccompProfile"):
        assert expected in problems


def test_schema_check_catches_a_misspelled_rayjob_field():
    rayjob = copy.deepcopy(rendered(job())[-1])
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    assert any("rayStartParam" in e for e in rayjob_errors(rayjob))


# ----------------------------------------------------------------- properties

estimators = st.sampled_from(["gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo"])
quantities = st.one_of(st.integers(1, 64), st.sampled_from(["500m", "2", "16Gi", "1.5"]))
names = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)


@st.composite
def valid_jobs(draw):
    estimator = draw(estimators)
    n = draw(st.integers(2, 16)) if estimator not in ("gae", "reinforce") else draw(st.integers(1, 16))
    micro = draw(st.integers(1, 8))
    trainers = draw(st.integers(1, 8))
    reward = draw(st.sampled_from([
        {"function": {"inline": REWARD_SOURCE}},
        {"function": {"configMapRef": {"name": "rw", "key": "r.py"}}},
        {"function": {"path": "/code/r.py"}},
        {"remote": {"url": "https://rm.example/score", "retries": 2}},
        {"model": {"path": "/models/rm"}},
    ]))
    doc = job(
        reward=reward,
        algorithm={"advantageEstimator": estimator, "nSamplesPerPrompt": n,
                   "kl": {"coef": draw(st.floats(0, 1)), "estimator": draw(st.sampled_from(["k1", "k2", "k3"]))}},
        training={"microBatchSize": micro, "trainers": trainers, "trainBatchSize": micro * trainers * draw(st.integers(1, 4)),
                  "zeroStage": draw(st.integers(0, 3))},
        cluster={"head": {"cpu": draw(quantities)}, "rollout": {"replicas": draw(st.integers(0, 4)), "gpus": draw(st.integers(0, 8))},
                 "trainer": {"replicas": draw(st.integers(1, 8)), "memory": draw(quantities)},
                 "placement": draw(st.sampled_from(["auto", "colocated", "distributed"]))},
        suspend=draw(st.booleans()),
    )
    doc["metadata"]["name"] = draw(names)
    return doc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_jobs())
def test_any_valid_spec_renders_deterministically_and_validly(doc):
    code = {"reward_func.py": REWARD_SOURCE}
    first = rendered(doc, code)
    assert rendered(copy.deepcopy(doc), code) == first
    assert rayjob_errors(first[-1]) == []
    for where, pod in pod_specs(first[-1]):
        assert restricted_violations(pod) == [], where


SPEC_PATHS = ["algorithm.nSamplesPerPrompt", "algorithm.advantageEstimator", "training.trainBatchSize",
              "rollout.temperature", "rollout.topP", "training.zeroStage", "cluster.head.cpu", "checkpoint.maxKeep",
              "algorithm.kl.estimator", "rollout.backend", "data.maxSamples"]
BAD_VALUES = [-1, "not-a-number", 1e9, None, [], {"x": 1}, "grpo", 0]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SPEC_PATHS), st.sampled_from(BAD_VALUES))
def test_every_rejected_spec_names_its_field(path, value):
    doc = job(algorithm={"advantageEstimator": "rloo", "nSamplesPerPrompt": 4})
    node = doc["spec"]
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    try:
        parse_job(doc)
    except InvalidJob as exc:
        named = [e.path for e in exc.errors]
        assert any(p.startswith("spec." + keys[0]) for p in named), (path, value, named)


def test_ray_pods_give_the_driver_time_to_checkpoint_on_sigterm():
    from rlhf_operator.render import TERMINATION_GRACE_SECONDS

    cluster = rendered(job())[-1]["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert pods and all(p["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS >= 300 for p in pods)


def test_the_head_stops_its_driver_before_the_pod_is_stopped():
    """Kubernetes signals PID 1 (KubeRay's bash); the preStop hook signals the driver of the
    rendered entrypoint's config, which checkpoints within the grace period."""
    spec = rendered(job())[-1]["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    command = head["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:4] == ["python", "-m", "rlhf_workers", "--stop-driver"]
    assert command[-2:] == spec["entrypoint"].split()[-2:] == ["--config", "/etc/rlhf/config/worker.json"]
    assert head["terminationGracePeriodSeconds"] >= 600


@pytest.mark.parametrize("path, doc", list(_all_examples()))
def test_every_container_has_a_read_only_root_and_writable_scratch(path, doc):
    rayjob = _render_example(path, doc)[-1]
    for where, pod in pod_specs(rayjob):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] == "rlhf-tmp" and mounts["/home/ray/.cache"] == "rlhf-cache", where
            assert volumes["rlhf-tmp"] == {"name": "rlhf-tmp", "emptyDir": {}}


def test_caches_point_into_scratch_unless_the_user_sets_them():
    doc = job(cluster={"env": [{"name": "HF_HOME", "value": "/models/hf"}, {"name": "XDG_CACHE_HOME", "value": "/data"}]})
    env = rendered(doc)[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), "no duplicate env entries"
    values = {e["name"]: e.get("value") for e in env}
    assert values["XDG_CACHE_HOME"] == "/data" and values["HF_HOME"] == "/models/hf"
    assert values["TRITON_CACHE_DIR"].startswith("/home/ray/.cache/")


@pytest.mark.parametrize("path, refused", [("/tmp", True), ("/home/ray/.cache", True), ("/tmp/", True),
                                           ("/tmp/ckpt", False), ("/home/ray/.cache/huggingface", False)])
def test_scratch_mount_points_are_taken_but_paths_inside_them_are_free(path, refused):
    doc = job(cluster={"volumes": [{"name": "extra", "mountPath": path.rstrip("/") or path,
                                    "source": {"persistentVolumeClaim": {"claimName": "c"}}}]})
    if refused:
        with pytest.raises(InvalidJob, match="writable emptyDir"):
            parse_job(doc)
    else:
        rayjob = rendered(doc)[-1]
        assert rayjob_errors(rayjob) == []


@pytest.mark.parametrize("annotations, refused", [
    ({"container.apparmor.security.beta.kubernetes.io/ray-head": "unconfined"}, "runtime/default or localhost"),
    ({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}, "seccomp annotations are not allowed"),
    ({"container.seccomp.security.alpha.kubernetes.io/ray-worker": "localhost/x"}, "seccomp annotations are not allowed"),
    ({"container.apparmor.security.beta.kubernetes.io/ray-head": "localhost/tight"}, None),
    ({"container.apparmor.security.beta.kubernetes.io/ray-head": "runtime/default", "team": "a"}, None),
])
def test_pod_annotations_that_weaken_the_restricted_profile_are_refused(annotations, refused):
    doc = job(cluster={"head": {"annotations": annotations}})
    if refused:
        with pytest.raises(InvalidJob, match=refused) as err:
            parse_job(doc)
        assert "cluster.head.annotations" in str(err.value)
    else:
        head = rendered(doc)[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
        assert head["metadata"]["annotations"] == annotations


def _admits(policy, pod_labels, namespace_labels, port):
    """Whether ``policy`` lets a pod with these labels, in a namespace with these, reach ``port``
    (NetworkPolicy semantics: any rule; in a rule, any peer and any port; matchLabels only)."""
    def matches(selector, labels):
        return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())

    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule["from"]:
            in_namespace = (matches(peer["namespaceSelector"], namespace_labels) if "namespaceSelector" in peer
                            else namespace_labels.get("kubernetes.io/metadata.name") == "team-a")
            if in_namespace and matches(peer["podSelector"], pod_labels):
                return True
    return False


def test_network_policy_admits_only_the_jobs_pods_the_operator_and_kuberay():
    doc = job(cluster={"networkPolicy": True})
    doc["metadata"]["namespace"] = "team-a"
    objects = rendered(doc, options=RenderOptions(operator_namespace="rlhf-system", kuberay_namespace="ray-system"))
    assert [o["kind"] for o in objects] == ["ConfigMap", "NetworkPolicy", "RayJob"]
    policy = objects[1]
    assert core_errors(policy) == []
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    head = objects[-1]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    submitter = objects[-1]["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    team_a = {"kubernetes.io/metadata.name": "team-a"}
    operator = {"app.kubernetes.io/part-of": "rlhf-operator", "app.kubernetes.io/component": "operator"}
    kuberay = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}
    # the policy selects every pod of the job, and the job's pods reach each other on any port
    assert all(policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items() for labels in (head, submitter))
    assert _admits(policy, submitter, team_a, 8265) and _admits(policy, head, team_a, 6379)
    # the operator reaches the progress port only, from its own namespace
    assert _admits(policy, operator, {"kubernetes.io/metadata.name": "rlhf-system"}, 8270)
    assert not _admits(policy, operator, {"kubernetes.io/metadata.name": "rlhf-system"}, 8265)
    assert not _admits(policy, operator, team_a, 8270)
    # KubeRay reaches the dashboard only
    assert _admits(policy, kuberay, {"kubernetes.io/metadata.name": "ray-system"}, 8265)
    assert not _admits(policy, kuberay, {"kubernetes.io/metadata.name": "ray-system"}, 10001)
    # another job's pods, or any other pod of the namespace, are not admitted
    other = {**head, "rlhf.dev/job-name": "other"}
    assert not _admits(policy, other, team_a, 8265) and not _admits(policy, {"app": "x"}, team_a, 8270)


def test_no_network_policy_unless_asked():
    assert [o["kind"] for o in rendered(job())] == ["ConfigMap", "RayJob"]


def test_network_policy_namespaces_come_from_the_operators_settings():
    from rlhf_operator.config import OperatorConfig
    from rlhf_operator.context import OperatorContext

    cfg = OperatorConfig.from_env({"RLHF_OPERATOR_NAMESPACE": "rlhf-system", "RLHF_KUBERAY_NAMESPACE": "ray-system"})
    options = OperatorContext(cfg).options
    policy = rendered(job(cluster={"networkPolicy": True}), options=options)[1]
    selectors = [rule["from"][0].get("namespaceSelector") for rule in policy["spec"]["ingress"][1:]]
    assert selectors == [{"matchLabels": {"kubernetes.io/metadata.name": "rlhf-system"}},
                         {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}]
