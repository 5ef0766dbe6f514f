"""KubeRay 1.7's rules, as its controller applies them to a RayJob, encoded for the tests.

Read from KubeRay v1.7.0 (commit 59d663aeec13760646da3db9c1cf8cfe883e30b7); every function
names the Go file and function it follows, paths relative to ``ray-operator/controllers/ray/``.
Nothing here comes from the operator's code: quantities are read with the ``kubernetes``
client's parser, as an independent reading of the same rules.

What the operator relies on, and the tests check, is that a rendered RayJob, read this way,
gets a head Service with a ``dashboard`` port (else KubeRay never submits the job), a
submitter that runs the rendered entrypoint, and Ray nodes whose CPU, GPU and memory counts
are the pod's.
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any, Optional

from kubernetes.utils import parse_quantity

Obj = dict[str, Any]

# utils/constant.go
CLIENT_PORT, GCS_PORT, DASHBOARD_PORT, METRICS_PORT, SERVE_PORT = 10001, 6379, 8265, 8080, 8000
DASHBOARD_AGENT_PORT = 52365
DEFAULT_PORTS = {"client": CLIENT_PORT, "gcs-server": GCS_PORT, "dashboard": DASHBOARD_PORT,
                 "metrics": METRICS_PORT, "serve": SERVE_PORT}
MAX_RAYJOB_NAME, MAX_RAYCLUSTER_NAME = 47, 53
CLUSTER_DOMAIN = "cluster.local"
SUBMITTER_CONTAINER = "ray-job-submitter"
# apimachinery pkg/util/rand: the alphabet of rand.String (no vowels, no 0, 1 or 3).
RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class DashboardPortNotFound(LookupError):
    """utils/util.go FetchHeadServiceURL: the head Service has no port named ``dashboard``."""


# --------------------------------------------------------------------------- names


def cluster_name(rayjob_name: str, rng: Optional[random.Random] = None) -> str:
    """utils.GenerateRayClusterName: ``{rayjob}-{rand.String(5)}``, never truncated."""
    rng = rng or random.Random()
    return f"{rayjob_name}-{''.join(rng.choice(RAND_ALPHABET) for _ in range(5))}"


def job_id(rayjob: Obj, rng: Optional[random.Random] = None) -> str:
    """utils.GenerateRayJobId: ``spec.jobId``, else ``{rayjob}-{rand.String(5)}``."""
    return rayjob["spec"].get("jobId") or cluster_name(rayjob["metadata"]["name"], rng)


def head_service_name(cluster: str) -> str:
    """utils.GenerateHeadServiceName(RayClusterCRD, ...): ``{cluster}-head-svc``."""
    return f"{cluster}-head-svc"


def rayjob_head_service_name(rayjob_name: str) -> str:
    """utils.GenerateHeadServiceName(RayJobCRD, ...): the RayJob's own Service, made once Running."""
    return f"{rayjob_name}-head-svc"


# --------------------------------------------------------------------------- head Service


def service_ports(cluster_spec: Obj) -> dict[str, int]:
    """common/service.go getServicePorts: the head container's ports by name.

    KubeRay's defaults (client, gcs-server, dashboard, metrics, serve) come only when the head
    container declares no port at all; otherwise only ``metrics`` is added, when missing. An
    unnamed port is called ``{port}-port``.
    """
    container = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p.get("name") or f"{p['containerPort']}-port": p["containerPort"] for p in container.get("ports") or []}
    if not ports:
        ports = dict(DEFAULT_PORTS)
    ports.setdefault("metrics", METRICS_PORT)
    return ports


def head_service(cluster: str, namespace: str, cluster_spec: Obj, *, cluster_ip_service: bool = False) -> Obj:
    """common/service.go BuildServiceForHeadPod, without a user-given ``headService``.

    Headless (``clusterIP: None``, not-ready addresses published) unless the operator runs with
    ``ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE=true`` or the group sets a NodePort/LoadBalancer type.
    """
    selector = {"ray.io/cluster": cluster, "ray.io/node-type": "head", "ray.io/identifier": f"{cluster}-head",
                "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    service_type = cluster_spec["headGroupSpec"].get("serviceType") or ""
    spec: Obj = {
        "selector": dict(selector),
        "ports": [{"name": name, "port": port, "appProtocol": "tcp"}
                  for name, port in sorted(service_ports(cluster_spec).items())],
    }
    if service_type:
        spec["type"] = service_type
    if not cluster_ip_service and service_type in ("", "ClusterIP"):
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": head_service_name(cluster), "namespace": namespace, "labels": dict(selector)},
            "spec": spec}


def dashboard_url(service: Obj, domain: str = CLUSTER_DOMAIN) -> str:
    """utils/util.go FetchHeadServiceURL(..., "dashboard"): ``{svc}.{ns}.svc.{domain}:{port}``, no scheme.

    The RayJob controller (rayjob_controller.go, Initializing) returns this error without
    changing the status: the RayJob stays Initializing, with no event, until a deadline.
    """
    for port in service["spec"]["ports"]:
        if port["name"] == "dashboard":
            meta = service["metadata"]
            return f"{meta['name']}.{meta['namespace']}.svc.{domain}:{port['port']}"
    raise DashboardPortNotFound("dashboard port is not found")


# --------------------------------------------------------------------------- Ray nodes


def _value(quantity: Any) -> int:
    """resource.Quantity.Value(): the quantity rounded up to an integer."""
    return math.ceil(parse_quantity(str(quantity)))


def is_gpu_resource(key: str) -> bool:
    """utils.IsGPUResourceKey: a limit whose name ends in ``gpu``, or an NVIDIA MIG slice."""
    return key.endswith("gpu") or re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", key) is not None


def ray_start_params(group: Obj, node_type: str, cluster: str = "", namespace: str = "",
                     head_port: str = str(GCS_PORT)) -> dict[str, str]:
    """common/pod.go setMissingRayStartParams and generateRayStartCommand's resource rules.

    ``num-cpus`` from the CPU limit (else the request), ``memory`` from the memory limit only,
    ``num-gpus`` from the first limit (by name) that is a GPU: each rounded up, and each only
    when ``rayStartParams`` does not name it already. ``block`` is always forced on.
    """
    params = dict(group.get("rayStartParams") or {})
    resources = group["template"]["spec"]["containers"][0].get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if node_type == "worker":
        params.setdefault("address", f"{head_service_name(cluster)}.{namespace}.svc.{CLUSTER_DOMAIN}:{head_port}")
    else:
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(DASHBOARD_AGENT_PORT))
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu is not None and _value(cpu):
            params["num-cpus"] = str(_value(cpu))
    if "memory" not in params and limits.get("memory") is not None and _value(limits["memory"]):
        params["memory"] = str(_value(limits["memory"]))
    if "num-gpus" not in params:
        for key in sorted(limits):
            if is_gpu_resource(key) and _value(limits[key]):
                params["num-gpus"] = str(_value(limits[key]))
                break
    return params


def ray_start_command(node_type: str, params: dict[str, str]) -> str:
    """common/pod.go generateRayStartCommand + convertParamMap: sorted `` --k=v `` pieces;
    ``true`` becomes a bare flag and ``false`` is dropped (except three keys that take values)."""
    pieces = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard", "include-log-monitor"):
            if value.lower() == "true":
                pieces.append(f" --{key} ")
        else:
            pieces.append(f" --{key}={value} ")
    return ("ray start --head " if node_type == "head" else "ray start ") + "".join(pieces)


def container_command(start_command: str) -> tuple[list[str], list[str]]:
    """common/pod.go BuildPod: the Ray container runs the generated command under bash."""
    return ["/bin/bash", "-c", "--"], [f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {start_command}"]


# Set whatever the container already has (common/pod.go setContainerEnvVars).
ENV_ALWAYS = ("RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE", "RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME",
              "KUBERAY_GEN_RAY_START_CMD")
ENV_ALWAYS_WORKER = ("FQ_RAY_IP", "RAY_IP")
ENV_ALWAYS_HEAD = ("RAY_USAGE_STATS_EXTRA_TAGS",)
# Set only when the container does not set them.
ENV_IF_ABSENT = ("RAY_PORT", "RAY_ADDRESS", "RAY_USAGE_STATS_KUBERAY_IN_USE", "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE")


def injected_env(node_type: str, cluster: str, namespace: str, start_command: str, head_port: str = str(GCS_PORT),
                 existing: tuple[str, ...] = ()) -> dict[str, str]:
    """common/pod.go setContainerEnvVars: the env KubeRay adds to the Ray container (field
    references resolved as the kubelet would for a pod of ``cluster``)."""
    fqdn = f"{head_service_name(cluster)}.{namespace}.svc.{CLUSTER_DOMAIN}"
    env: dict[str, str] = {}
    if node_type == "worker":
        env.update(FQ_RAY_IP=fqdn, RAY_IP=head_service_name(cluster))
    env.update(RAY_CLUSTER_NAME=cluster, RAY_CLUSTER_NAMESPACE=namespace,
               RAY_CLOUD_INSTANCE_ID=f"{cluster}-{node_type}-xxxxx",
               RAY_NODE_TYPE_NAME="headgroup" if node_type == "head" else "worker",
               KUBERAY_GEN_RAY_START_CMD=start_command)
    optional = {"RAY_PORT": head_port,
                "RAY_ADDRESS": f"127.0.0.1:{head_port}" if node_type == "head" else f"{fqdn}:{head_port}",
                "RAY_USAGE_STATS_KUBERAY_IN_USE": "1", "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1"}
    env.update({k: v for k, v in optional.items() if k not in existing})
    if node_type == "head":
        env["RAY_USAGE_STATS_EXTRA_TAGS"] = "kuberay_version=v1.7.0;kuberay_crd=RayJob"
    return env


def shared_memory_volume(group: Obj) -> Optional[Obj]:
    """common/pod.go addEmptyDir: KubeRay's ``shared-mem`` at /dev/shm, sized by the memory limit,
    unless ``plasma-directory`` is set or the container mounts something at /dev/shm already."""
    container = group["template"]["spec"]["containers"][0]
    if "plasma-directory" in (group.get("rayStartParams") or {}):
        return None
    if any(m["mountPath"] == "/dev/shm" for m in container.get("volumeMounts") or []):
        return None
    resources = container.get("resources") or {}
    memory = (resources.get("limits") or {}).get("memory") or (resources.get("requests") or {}).get("memory")
    return {"name": "shared-mem", "emptyDir": {"medium": "Memory", **({"sizeLimit": memory} if memory else {})}}


# --------------------------------------------------------------------------- submitter


def submit_command(rayjob: Obj) -> str:
    """common/job.go BuildJobSubmitCommand (K8sJobMode), joined into the one bash script that
    rayjob_controller.go configureSubmitterContainer runs with ``/bin/bash -ce --``.

    The entrypoint is one unquoted element: the shell splits it.
    """
    spec, status = rayjob["spec"], rayjob["status"]
    address = status["dashboardURL"]
    if not address.startswith("http://"):
        address = "http://" + address
    jid = status["jobId"]
    health = ("python -c \"import urllib.request; r=urllib.request.urlopen('%s/api/gcs_healthz', timeout=10); "
              "exit(0 if b'success' in r.read() else 1)\"" % address)
    words = ["until", health, ">/dev/null", "2>&1", ";", "do", "echo",
             json.dumps(f"Waiting for Ray Dashboard GCS to become healthy at {address} ..."), ";", "sleep", "2", ";",
             "done", ";", "if", "!", "ray", "job", "status", "--address", address, jid, ">/dev/null", "2>&1", ";",
             "then", "ray", "job", "submit", "--address", address, "--no-wait"]
    if spec.get("runtimeEnvYAML"):
        raise NotImplementedError("runtimeEnvYAML: the operator renders none")
    if spec.get("metadata"):
        words += ["--metadata-json", json.dumps(json.dumps(spec["metadata"]))]
    words += ["--submission-id", jid]
    if spec.get("entrypointNumCpus"):
        words += ["--entrypoint-num-cpus", f"{spec['entrypointNumCpus']:f}"]
    if spec.get("entrypointNumGpus"):
        words += ["--entrypoint-num-gpus", f"{spec['entrypointNumGpus']:f}"]
    words += ["--", spec["entrypoint"].strip(), ";", "fi", ";", "ray", "job", "logs", "--address", address, "--follow", jid]
    return " ".join(words)


def submitter_job(rayjob: Obj, head_image: str) -> Obj:
    """rayjob_controller.go createNewK8sJob + getSubmitterTemplate: a batch Job named as the
    RayJob; container 0 gets the script when it has no command, and three env vars always."""
    template = json.loads(json.dumps(rayjob["spec"].get("submitterPodTemplate") or {
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": SUBMITTER_CONTAINER, "image": head_image,
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "200Mi"}}}]}}))
    container = template["spec"]["containers"][0]
    if not container.get("command"):
        container["command"] = ["/bin/bash", "-ce", "--"]
        container["args"] = [submit_command(rayjob)]
    container["env"] = [*container.get("env", []), {"name": "PYTHONUNBUFFERED", "value": "1"},
                        {"name": "RAY_DASHBOARD_ADDRESS", "value": rayjob["status"]["dashboardURL"]},
                        {"name": "RAY_JOB_SUBMISSION_ID", "value": rayjob["status"]["jobId"]}]
    name = rayjob["metadata"]["name"]
    template.setdefault("metadata", {}).setdefault("labels", {}).update({
        "ray.io/originated-from-cr-name": name, "ray.io/originated-from-crd": "RayJob",
        "app.kubernetes.io/created-by": "kuberay-operator"})
    backoff = (rayjob["spec"].get("submitterConfig") or {}).get("backoffLimit", 2)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": rayjob["metadata"].get("namespace"),
                         "labels": {"ray.io/originated-from-cr-name": name, "ray.io/originated-from-crd": "RayJob",
                                    "app.kubernetes.io/created-by": "kuberay-operator"}},
            "spec": {"backoffLimit": backoff, "template": template}}


# --------------------------------------------------------------------------- validation


def validation_error(rayjob: Obj) -> Optional[str]:
    """utils/validation.go ValidateRayJobMetadata / ValidateRayJobSpec / ValidateRayClusterSpec,
    the rules a rendered RayJob (K8sJobMode, with a rayClusterSpec) can meet, in their order.
    KubeRay answers the first with ``jobDeploymentStatus: ValidationFailed``, a dead end."""
    name, spec = rayjob["metadata"]["name"], rayjob["spec"]
    if len(name) > MAX_RAYJOB_NAME:
        return "The RayJob metadata is invalid: RayJob name should be no more than 47 characters"
    if not DNS_1035.match(name):
        return f"The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: {name}"
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    if spec.get("suspend") and not shutdown:
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not "
                "allowed to be suspended")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0:
        return "The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer"
    if not shutdown and ttl > 0:
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
                "TTLSecondsAfterFinished")
    cluster = spec.get("rayClusterSpec")
    if cluster is None:
        return "The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set"
    error = _cluster_spec_error(cluster)
    if error:
        return f"The RayJob spec is invalid: {error}"
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        return "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer"
    if spec.get("backoffLimit", 0) < 0:
        return "The RayJob spec is invalid: backoffLimit must be a positive integer"
    return None


_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def _cluster_spec_error(cluster: Obj) -> Optional[str]:
    head = cluster["headGroupSpec"]
    if not head["template"]["spec"].get("containers"):
        return "headGroupSpec should have at least one container"
    if head.get("resources") and any(k in (head.get("rayStartParams") or {}) for k in _RESOURCE_PARAMS):
        return ("resource fields should not be set in both rayStartParams and Resources for Head group; "
                "please use only one")
    if "labels" in (head.get("rayStartParams") or {}):
        return ("rayStartParams['labels'] is not supported for Head group; please use the top-level Labels "
                "field instead")
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    for group in cluster.get("workerGroupSpecs") or []:
        name = group["groupName"]
        if not group["template"]["spec"].get("containers"):
            return "workerGroupSpec should have at least one container"
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            return f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled"
        if low is not None and high is not None and low > high:
            return f"worker group {name} has minReplicas {low} greater than maxReplicas {high}"
    return None


def desired_workers(cluster_spec: Obj) -> int:
    """raycluster_controller.go calculateStatus: Σ clamp(replicas, min, max) × numOfHosts; the
    cluster is ``ready`` once exactly this many workers and the head run."""
    total = 0
    for group in cluster_spec.get("workerGroupSpecs") or []:
        if group.get("suspend"):
            continue
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        replicas = group.get("replicas", low)
        total += min(max(replicas, low), high) * group.get("numOfHosts", 1)
    return total
