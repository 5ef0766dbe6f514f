"""Rendered RayJobs read the way KubeRay 1.7's controller reads them: one test per rule the
operator relies on, over every example and a matrix of specs (placements, GPUs, volumes).

The rules live in ``support/kuberay.py``, each citing the KubeRay file and function it encodes.
"""

from __future__ import annotations

import random
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from k8s_schemas import core_errors
from rlhf_operator.config import OperatorConfig
from rlhf_api.progress import PROGRESS_PORT, PROGRESS_PORT_NAME
from rlhf_operator.render import code_refs, render
from rlhf_api.validation import InvalidJob, parse_job
from support import kuberay

ROOT = Path(__file__).resolve().parents[2]
NS = "team-a"
REWARD = "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"
ENTRYPOINT = ["python", "-m", "rlhf_workers", "--config", "/etc/rlhf/config/worker.json"]


def _spec(cluster: dict, **extra) -> dict:
    return {"model": {"path": "/models/m"}, "data": {"prompts": "/data/p.jsonl"},
            "reward": {"function": {"inline": REWARD}}, "cluster": cluster, **extra}


MATRIX = {
    "head-only": _spec({"placement": "colocated", "trainer": {"replicas": 0}}),
    "colocated-1-trainer": _spec({"placement": "colocated"}),
    "colocated-8-gpus": _spec({"placement": "colocated", "trainer": {"replicas": 2, "gpus": 8}}),
    "distributed-gpus": _spec({"placement": "distributed", "rollout": {"replicas": 2, "gpus": 1},
                               "trainer": {"replicas": 4, "gpus": 8, "memory": "512Gi"}}),
    "amd-gpus": _spec({"placement": "distributed", "rollout": {"replicas": 1, "gpus": 2, "gpuResourceName": "amd.com/gpu"},
                       "trainer": {"replicas": 1, "gpus": 4, "gpuResourceName": "amd.com/gpu"}}),
    "gpu-head": _spec({"placement": "colocated", "head": {"gpus": 1}, "trainer": {"replicas": 0}}),
    "fractional-cpu": _spec({"head": {"cpu": "1500m", "memory": "3G"}, "trainer": {"cpu": "500m", "memory": "1.5Gi"}}),
    "volumes": _spec({"volumes": [{"name": "models", "mountPath": "/models", "source": {
                          "persistentVolumeClaim": {"claimName": "models"}}}]},
                     checkpoint={"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}),
    "queued-suspended": _spec({}, suspend=True, ttlSecondsAfterFinished=600, activeDeadlineSeconds=86400),
    "long-name": _spec({}),
}


def _cases():
    for name, spec in MATRIX.items():
        job_name = ("a" * 45) if name == "long-name" else "demo"
        doc = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
               "metadata": {"name": job_name, "namespace": NS, "uid": "u-1"}, "spec": spec}
        yield pytest.param(doc, {}, id=name)
    for path in sorted((ROOT / "examples").glob("**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RLHFJob":
                doc["metadata"].setdefault("namespace", NS)
                refs = code_refs(parse_job(doc).spec)
                code = {r.file: (path.parent / r.key).read_text() for r in refs}
                yield pytest.param(doc, code, id=f"example:{path.parent.name}/{path.name}")


CASES = list(_cases())


def rendered_rayjob(doc: dict, code: dict) -> dict:
    return render(parse_job(doc), code)[-1]


def groups(rayjob: dict) -> list[tuple[str, dict]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"])] + [("worker", g) for g in cluster["workerGroupSpecs"]]


@pytest.mark.parametrize("doc, code", CASES)
def test_kuberay_validation_accepts_the_rayjob(doc, code):
    """utils/validation.go ValidateRayJobMetadata/ValidateRayJobSpec/ValidateRayClusterSpec: a
    refused RayJob goes to ValidationFailed, which no state of KubeRay's machine leaves."""
    assert kuberay.validation_error(rendered_rayjob(doc, code)) is None


@pytest.mark.parametrize("name", ["1job", "a" * 46, "job_1"])
def test_names_kuberay_would_refuse_are_refused_at_admission(name):
    """utils/validation.go ValidateRayJobMetadata: a DNS-1035 label of at most 47 characters.
    The RayJob takes the RLHFJob's name, so the spec model refuses what KubeRay would."""
    doc = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name}, "spec": _spec({})}
    with pytest.raises(InvalidJob, match="metadata.name"):
        parse_job(doc)


@pytest.mark.parametrize("doc, code", CASES)
def test_head_service_has_the_dashboard_port_the_controller_submits_through(doc, code):
    """common/service.go getServicePorts + utils/util.go FetchHeadServiceURL: without a
    ``dashboard`` port on the head Service the RayJob stays Initializing for ever."""
    rayjob = rendered_rayjob(doc, code)
    cluster = kuberay.cluster_name(rayjob["metadata"]["name"], random.Random(1))
    service = kuberay.head_service(cluster, NS, rayjob["spec"]["rayClusterSpec"])
    assert kuberay.dashboard_url(service) == f"{cluster}-head-svc.{NS}.svc.cluster.local:8265"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"client": 10001, "dashboard": 8265, "gcs-server": 6379, "metrics": 8080,
                     PROGRESS_PORT_NAME: PROGRESS_PORT}
    # Even with ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE, workers reach GCS through the Service.
    cluster_ip = kuberay.head_service(cluster, NS, rayjob["spec"]["rayClusterSpec"], cluster_ip_service=True)
    assert "clusterIP" not in cluster_ip["spec"] and {"name": "gcs-server", "port": 6379, "appProtocol": "tcp"} \
        in cluster_ip["spec"]["ports"]
    assert core_errors(service) == []


@pytest.mark.parametrize("doc, code", CASES)
def test_operator_polls_progress_on_the_head_service_kuberay_names(doc, code):
    """utils.GenerateRayClusterName ({rayjob}-{5 random}), GenerateHeadServiceName
    ({cluster}-head-svc, and {rayjob}-head-svc for the RayJob's own Service)."""
    rayjob = rendered_rayjob(doc, code)
    name = rayjob["metadata"]["name"]
    cluster = kuberay.cluster_name(name, random.Random(2))
    assert len(cluster) <= kuberay.MAX_RAYCLUSTER_NAME and kuberay.DNS_1035.match(cluster)
    template = OperatorConfig().progress_url
    for cluster_field, service_name in ((cluster, kuberay.head_service_name(cluster)),
                                        (name, kuberay.rayjob_head_service_name(name))):
        url = urlsplit(template.format(cluster=cluster_field, namespace=NS, port=PROGRESS_PORT, job=name))
        assert url.hostname == f"{service_name}.{NS}.svc"
        service = kuberay.head_service(cluster, NS, rayjob["spec"]["rayClusterSpec"])
        assert {"name": PROGRESS_PORT_NAME, "port": url.port, "appProtocol": "tcp"} in service["spec"]["ports"]


@pytest.mark.parametrize("doc, code", CASES)
def test_submitter_runs_the_rendered_entrypoint(doc, code):
    """common/job.go BuildJobSubmitCommand + rayjob_controller.go configureSubmitterContainer:
    container 0 of our submitter template has no command, so KubeRay gives it the submit script;
    the entrypoint goes in unquoted and the shell splits it."""
    rayjob = rendered_rayjob(doc, code)
    name = rayjob["metadata"]["name"]
    rayjob["status"] = {"dashboardURL": f"{name}-abcde-head-svc.{NS}.svc.cluster.local:8265", "jobId": f"{name}-xyz12"}
    head_image = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    job = kuberay.submitter_job(rayjob, head_image)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == kuberay.SUBMITTER_CONTAINER and container["image"] == head_image
    assert container["command"] == ["/bin/bash", "-ce", "--"]
    assert pod["restartPolicy"] == "Never"  # a Job's pods must not restart in place
    script = container["args"][0]
    subprocess.run(["bash", "-n", "-c", script], check=True)
    submit = script.split(" ray job submit ", 1)[1]
    assert shlex.split(submit.split(" -- ", 1)[1].split(" ;", 1)[0]) == ENTRYPOINT
    assert f"--submission-id {name}-xyz12" in submit
    job["spec"]["template"]["metadata"]["labels"].update(rayjob["spec"]["submitterPodTemplate"]["metadata"]["labels"])
    assert core_errors(job) == []


def _limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("doc, code", CASES)
def test_ray_nodes_get_the_pods_cpus_gpus_and_memory(doc, code):
    """common/pod.go generateRayStartCommand: num-cpus from the CPU limit rounded up, memory
    from the memory limit, num-gpus from the first limit ending in 'gpu'. Every pod has a CPU
    limit, so Ray never counts the node's cores; a head beside worker groups takes no GPU work."""
    rayjob = rendered_rayjob(doc, code)
    spec = parse_job(doc).spec
    for node_type, group in groups(rayjob):
        params = kuberay.ray_start_params(group, node_type, "demo-abcde", NS)
        limits = _limits(group)
        assert "cpu" in limits and "memory" in limits, group.get("groupName", "head")
        gpu_keys = [k for k in limits if k not in ("cpu", "memory")]
        expected_gpus = limits[gpu_keys[0]] if gpu_keys else None
        if node_type == "head" and rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] and not spec.cluster.head.gpus:
            expected_gpus = "0"
        assert params.get("num-gpus") == expected_gpus
        assert int(params["num-cpus"]) >= 1
        assert int(params["memory"]) > 0
        command = kuberay.ray_start_command(node_type, params)
        assert f" --num-cpus={params['num-cpus']} " in command and " --block " in command


def test_cpu_defaults_follow_gpus_and_round_up_as_kuberay_does():
    """resource.Quantity.Value() rounds up: 1500m is 2 Ray CPUs, 500m is 1."""
    doc = dict(CASES[[c.id for c in CASES].index("fractional-cpu")].values[0])
    rayjob = rendered_rayjob(doc, {})
    by_name = {g.get("groupName", "head"): kuberay.ray_start_params(g, t, "demo-abcde", NS) for t, g in groups(rayjob)}
    assert (by_name["head"]["num-cpus"], by_name["head"]["memory"]) == ("2", "3000000000")
    assert (by_name["trainer"]["num-cpus"], by_name["trainer"]["memory"]) == ("1", str(int(1.5 * 2**30)))
    gpus = rendered_rayjob(dict(CASES[[c.id for c in CASES].index("distributed-gpus")].values[0]), {})
    by_name = {g.get("groupName", "head"): kuberay.ray_start_params(g, t, "demo-abcde", NS) for t, g in groups(gpus)}
    assert {k: (v["num-cpus"], v.get("num-gpus")) for k, v in by_name.items()} == {
        "head": ("2", "0"), "rollout": ("4", "1"), "trainer": ("32", "8")}


@pytest.mark.parametrize("doc, code", CASES)
def test_kuberays_env_reaches_the_driver_unshadowed(doc, code):
    """common/pod.go setContainerEnvVars: RAY_ADDRESS (the head's 127.0.0.1:6379, which the
    driver's ray.init reads) is set only when the container has none; others are appended twice
    if the container sets them. The rendered env sets none of them."""
    rayjob = rendered_rayjob(doc, code)
    for node_type, group in groups(rayjob):
        names = tuple(e["name"] for e in group["template"]["spec"]["containers"][0]["env"])
        injected = kuberay.injected_env(node_type, "demo-abcde", NS, "ray start", existing=names)
        assert not set(names) & set(injected)
        if node_type == "head":
            assert injected["RAY_ADDRESS"] == "127.0.0.1:6379"


@pytest.mark.parametrize("name", ["RAY_ADDRESS", "RAY_PORT", "KUBERAY_GEN_RAY_START_CMD", "RLHF_CONFIG"])
def test_env_that_would_shadow_kuberays_or_ours_is_refused(name):
    doc = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "demo"},
           "spec": _spec({"env": [{"name": name, "value": "x"}]})}
    with pytest.raises(InvalidJob, match=f"cluster.env.*{name}"):
        parse_job(doc)


@pytest.mark.parametrize("doc, code", CASES)
def test_dev_shm_is_ours_and_bounded(doc, code):
    """common/pod.go addEmptyDir: KubeRay adds its own /dev/shm only when nothing is mounted
    there; ours is memory-backed with a sizeLimit within the pod's memory limit."""
    for _, group in groups(rendered_rayjob(doc, code)):
        assert kuberay.shared_memory_volume(group) is None
        pod = group["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm["medium"] == "Memory"
        assert 0 < kuberay._value(shm["sizeLimit"]) <= kuberay._value(_limits(group)["memory"])
