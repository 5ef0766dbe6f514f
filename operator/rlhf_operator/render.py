"""Pure rendering: an RLHFJob in, the Kubernetes objects the operator creates out. No I/O.

``render(job, code_sources)`` returns, in creation order:

1. the job's snapshot: one immutable ConfigMap with the worker config (the same spec model,
   serialized) and the reward/agent code (from inline source or the referenced ConfigMap's
   content). It is ``<job>-code-<hash>``, named by the code's hash, when the job has code to
   snapshot, and ``<job>-config`` when it has none (a reward model, a remote reward);
2. the ``ray.io/v1`` RayJob, whose Ray cluster runs ``python -m rlhf_workers``.

Every object carries ``app.kubernetes.io/*`` labels and, when the job's uid is known, a
controller ownerReference to the RLHFJob, so deleting the job deletes them.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping, Optional

from rlhf_api.cluster import GroupSpec
from rlhf_api.names import (API_VERSION, CODE_HASH_ANNOTATION, ENV_CONFIG, ENV_JOB_NAME, ENV_REWARD_TOKEN, ENV_WANDB_KEY,
                             JOB_LABEL, KIND, KUEUE_LABELS, KUEUE_QUEUE_LABEL, MANAGER, TINY_MODEL_ANNOTATION, SCRATCH_DIRS)
from rlhf_api.progress import PROGRESS_PORT, PROGRESS_PORT_NAME
from rlhf_api.spec import AgentSpec, FunctionReward, RLHFJob, RLHFJobSpec
from rlhf_api.workerconfig import AGENT_FILE, CODE_DIR, CONFIG_DIR, CONFIG_FILE, REWARD_FILE, WorkerConfig

DEFAULT_WORKER_IMAGE = "ghcr.io/rlhf-dev/rlhf-workers:0.1.0"
RUN_AS_USER = 1000  # the worker image's non-root user

# On SIGTERM (preemption, drain) the driver finishes its current step, saves a checkpoint and exits;
# the Ray pods must outlive that: a step and a save of a large model take minutes, Kubernetes' 30 s do not fit.
TERMINATION_GRACE_SECONDS = 600

# KubeRay 1.7's head ports by the names it looks them up with (ray-operator/controllers/ray/
# utils/constant.go; common/service.go getServicePorts).
KUBERAY_HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001), ("metrics", 8080))
DASHBOARD_PORT = dict(KUBERAY_HEAD_PORTS)["dashboard"]



class MissingCode(LookupError):
    """Code referenced through configMapRef was not supplied to render()."""


@dataclass(frozen=True)
class RenderOptions:
    """Operator-wide settings (the Helm chart sets them through the operator's environment)."""

    default_image: str = DEFAULT_WORKER_IMAGE
    # KubeRay's own submitter defaults: `ray job logs --follow` needs headroom, and an OOM
    # there fails the whole job as SubmissionFailed.
    submitter_cpu: str = "500m"
    submitter_memory: str = "1Gi"
    # How long the driver keeps serving its final report after training ends: the operator
    # polls every 15 s, so two polls and a timeout's worth of margin.
    progress_linger_seconds: float = 35.0
    # Where the operator and KubeRay run, for a job's NetworkPolicy (cluster.networkPolicy); None
    # admits their pods (by label) from any namespace.
    operator_namespace: Optional[str] = None
    kuberay_namespace: Optional[str] = None


@dataclass(frozen=True)
class CodeRef:
    """Code the operator must read from a ConfigMap before rendering."""

    file: str  # name inside the snapshot (reward_func.py or agent_func.py)
    config_map: str
    key: str
    field: str  # spec path, for error messages


def code_refs(spec: RLHFJobSpec) -> list[CodeRef]:
    refs = []
    if spec.reward and spec.reward.function and spec.reward.function.config_map_ref:
        ref = spec.reward.function.config_map_ref
        refs.append(CodeRef(REWARD_FILE, ref.name, ref.key or REWARD_FILE, "spec.reward.function.configMapRef"))
    if spec.agent and spec.agent.config_map_ref:
        ref = spec.agent.config_map_ref
        refs.append(CodeRef(AGENT_FILE, ref.name, ref.key or AGENT_FILE, "spec.agent.configMapRef"))
    return refs


def snapshot_code(spec: RLHFJobSpec, code_sources: Mapping[str, str]) -> dict[str, str]:
    """The files that go into the code snapshot: inline sources plus resolved ConfigMap sources."""
    files: dict[str, str] = {}
    if spec.reward and spec.reward.function and spec.reward.function.inline is not None:
        files[REWARD_FILE] = spec.reward.function.inline
    if spec.agent and spec.agent.inline is not None:
        files[AGENT_FILE] = spec.agent.inline
    for ref in code_refs(spec):
        if ref.file not in code_sources:
            raise MissingCode(f"{ref.field}: ConfigMap {ref.config_map!r} key {ref.key!r} was not resolved")
        files[ref.file] = code_sources[ref.file]
    return files


def code_hash(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:10]


def snapshot_configmap_name(job_name: str, code_digest: Optional[str]) -> str:
    """The one ConfigMap the pods mount: named by the code's hash when there is code."""
    return f"{job_name}-code-{code_digest}" if code_digest else f"{job_name}-config"


def rayjob_name(job_name: str) -> str:
    return job_name


def network_policy_name(job_name: str) -> str:
    return f"{job_name}-ingress"


def labels(job: RLHFJob, component: str) -> dict[str, str]:
    # No app.kubernetes.io/instance: Argo CD's label tracking reads that label, and an Argo
    # application that shares the job's name would claim (and prune) these children.
    return {
        "app.kubernetes.io/name": "rlhf-job",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": MANAGER,
        "app.kubernetes.io/managed-by": MANAGER,
        JOB_LABEL: job.metadata.name,
    }


def owner_references(job: RLHFJob) -> list[dict[str, Any]]:
    if not job.metadata.uid:
        return []
    return [{
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        # No blockOwnerDeletion: it needs update on rlhfjobs/finalizers where owner-reference
        # permissions are enforced (OpenShift), and the operator asks for no more than it uses.
    }]


def _metadata(job: RLHFJob, name: str, component: str, extra_labels: Optional[dict[str, str]] = None,
              annotations: Optional[dict[str, str]] = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**labels(job, component), **(extra_labels or {})}}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    if annotations:
        meta["annotations"] = annotations
    owners = owner_references(job)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def worker_config(job: RLHFJob, files: Mapping[str, str], digest: Optional[str],
                  options: RenderOptions = RenderOptions()) -> WorkerConfig:
    spec = job.spec
    reward_path = agent_path = None
    # Snapshotted code is read from the mounted snapshot, so the config refers to it by
    # path instead of carrying a second copy of the source (ConfigMaps hold 1 MiB at most).
    if spec.reward and spec.reward.function:
        reward_path = spec.reward.function.path or f"{CODE_DIR}/{REWARD_FILE}"
        function = FunctionReward(path=reward_path)
        spec = spec.model_copy(update={"reward": spec.reward.model_copy(update={"function": function})})
    if spec.agent:
        agent_path = spec.agent.path or f"{CODE_DIR}/{AGENT_FILE}"
        agent = AgentSpec(path=agent_path, max_steps=spec.agent.max_steps)
        spec = spec.model_copy(update={"agent": agent})
    return WorkerConfig(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace,
        spec=spec,
        reward_code_path=reward_path,
        agent_code_path=agent_path,
        code_hash=digest if files else None,
        create_tiny_model=job.metadata.annotations.get(TINY_MODEL_ANNOTATION, "").lower() == "true",
        output_dir=spec.checkpoint.path,
        progress_port=PROGRESS_PORT,
        progress_linger_seconds=options.progress_linger_seconds,
    )


# --------------------------------------------------------------------------- pods


# Functions, not constants: every pod gets its own dicts (cheaper than deep copies).
def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,  # writes go to the scratch emptyDirs (SCRATCH_DIRS) and volumes
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# Defaults for a group that names no cpu or memory. Every pod gets requests equal to limits
# (Guaranteed QoS: a head without them was BestEffort, the first pod a node evicts), and a CPU
# limit on every pod, since KubeRay derives Ray's num-cpus from it: without one, Ray counts the
# node's cores and oversubscribes the pod. Per GPU, 4 cores and 32Gi fit the common GPU nodes
# (a 4-GPU node with 48 cores and 192 GiB takes a 4-GPU pod with room for the system).
CPU_PER_GPU, MEMORY_GIB_PER_GPU = 4, 32
CPU_WITHOUT_GPU, MEMORY_GIB_WITHOUT_GPU = 2, 8

_QUANTITY_SUFFIX = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def quantity_value(quantity: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``16Gi``, ``1e9``) as a number; the spec has validated it."""
    text = str(quantity).lstrip("+")
    number = text.rstrip("numkKMGTPEi")
    suffix = text[len(number):]
    if "e" in number.lower() and not suffix:
        return Decimal(number)
    return Decimal(number) * _QUANTITY_SUFFIX[suffix]


def group_amounts(group: GroupSpec) -> dict[str, str]:
    """CPU, memory and GPUs of one pod: the group's own, or the defaults above."""
    amounts = {
        "cpu": str(group.cpu) if group.cpu is not None else str(CPU_PER_GPU * group.gpus or CPU_WITHOUT_GPU),
        "memory": str(group.memory) if group.memory is not None
        else f"{MEMORY_GIB_PER_GPU * group.gpus or MEMORY_GIB_WITHOUT_GPU}Gi",
    }
    if group.gpus:
        amounts[group.gpu_resource_name] = str(group.gpus)
    return amounts


def shm_size_limit(memory: str) -> str:
    """Half the pod's memory for /dev/shm: Ray's object store takes 30% of memory from there by
    default, NCCL and vLLM some more; a memory-backed emptyDir counts against the pod's limit."""
    half = int(quantity_value(memory) / 2)
    return f"{half // 2**20}Mi" if half % 2**20 == 0 else str(half)


def _env(job: RLHFJob) -> list[dict[str, Any]]:
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": ENV_JOB_NAME, "value": job.metadata.name},
        {"name": ENV_CONFIG, "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    # Secrets arrive as env straight from the Secret; they are never copied anywhere.
    wandb = spec.logging.wandb
    if wandb and wandb.api_key_secret_ref:
        env.append({"name": ENV_WANDB_KEY, "valueFrom": {"secretKeyRef": wandb.api_key_secret_ref.dump()}})
    remote = spec.reward.remote if spec.reward else None
    if remote and remote.token_secret_ref:
        env.append({"name": ENV_REWARD_TOKEN, "valueFrom": {"secretKeyRef": remote.token_secret_ref.dump()}})
    env += [{"name": e.name, "valueFrom": e.value_from.dump()} if e.value_from is not None
            else {"name": e.name, "value": e.value} for e in spec.cluster.env]
    given = {e["name"] for e in env}
    env += [{"name": k, "value": v} for k, v in CACHE_ENV.items() if k not in given]
    return env


# With a read-only root file system every cache must sit in a scratch emptyDir, whatever image
# the job runs (the worker image sets the same; a custom image may not). HF_HOME and
# VLLM_CACHE_ROOT follow XDG_CACHE_HOME; a user's own value in cluster.env wins.
CACHE_ENV = {
    "XDG_CACHE_HOME": SCRATCH_DIRS["rlhf-cache"],
    "TRITON_CACHE_DIR": f"{SCRATCH_DIRS['rlhf-cache']}/triton",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "WANDB_CONFIG_DIR": f"{SCRATCH_DIRS['rlhf-cache']}/wandb",
}


def _scratch() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [{"name": name, "emptyDir": {}} for name in SCRATCH_DIRS]
    mounts = [{"name": name, "mountPath": path} for name, path in SCRATCH_DIRS.items()]
    return volumes, mounts


@dataclass(frozen=True)
class Snapshot:
    """The job's snapshot ConfigMap, as the pods mount it."""

    name: str
    code_files: tuple[str, ...] = ()


def _volumes(job: RLHFJob, snapshot: Snapshot, memory: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    # One ConfigMap, two mounts: the worker config and the code each appear in their own directory.
    volumes: list[dict[str, Any]] = [
        {"name": "rlhf-config", "configMap": {
            "name": snapshot.name, "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}]}},
        # vLLM and NCCL need more shared memory than the container runtime's 64 MiB default.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size_limit(memory)}},
        {"name": "checkpoints", **copy.deepcopy(spec.checkpoint.volume or {"emptyDir": {}})},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "rlhf-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "checkpoints", "mountPath": spec.checkpoint.path},
    ]
    scratch_volumes, scratch_mounts = _scratch()
    volumes += scratch_volumes
    mounts += scratch_mounts
    if snapshot.code_files:
        volumes.append({"name": "rlhf-code", "configMap": {
            "name": snapshot.name, "items": [{"key": name, "path": name} for name in snapshot.code_files]}})
        mounts.append({"name": "rlhf-code", "mountPath": CODE_DIR, "readOnly": True})
    for extra in spec.cluster.volumes:
        volumes.append({"name": extra.name, **copy.deepcopy(extra.source)})
        mounts.append({"name": extra.name, "mountPath": extra.mount_path, "readOnly": extra.read_only})
    return volumes, mounts


def _pod_template(job: RLHFJob, component: str, group: GroupSpec, container_name: str, image: str,
                  snapshot: Snapshot, ports: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    cluster = job.spec.cluster
    amounts = group_amounts(group)
    volumes, mounts = _volumes(job, snapshot, amounts["memory"])
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "env": _env(job),
        **({"envFrom": [source.dump() for source in cluster.env_from]} if cluster.env_from else {}),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
    }
    if cluster.image_pull_policy:
        container["imagePullPolicy"] = cluster.image_pull_policy
    container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    if ports:
        container["ports"] = ports
    pod: dict[str, Any] = {
        # No API token unless the job asks for one: the pods run user code.
        "automountServiceAccountToken": cluster.automount_service_account_token,
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
        "volumes": volumes,
    }
    if group.node_selector:
        pod["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        pod["tolerations"] = copy.deepcopy(group.tolerations)
    if group.affinity:
        pod["affinity"] = copy.deepcopy(group.affinity)
    if cluster.service_account_name:
        pod["serviceAccountName"] = cluster.service_account_name
    if cluster.priority_class_name:
        pod["priorityClassName"] = cluster.priority_class_name
    if cluster.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in cluster.image_pull_secrets]
    meta: dict[str, Any] = {"labels": {**labels(job, component), **group.labels}}
    if group.annotations:
        meta["annotations"] = dict(group.annotations)
    return {"metadata": meta, "spec": pod}


def _head_template(job: RLHFJob, image: str, snapshot: Snapshot, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """The head pod, whose container runs the driver under KubeRay's ``ray start --block``.

    Kubernetes sends SIGTERM to the container's PID 1, KubeRay's bash, never to the driver; the
    preStop hook signals the driver itself and waits while it finishes its step and checkpoints
    (within terminationGracePeriodSeconds), before the pod's processes are stopped.
    """
    template = _pod_template(job, "head", job.spec.cluster.head, "ray-head", image, snapshot, ports)
    if job.spec.cluster.reward_runtime_class_name:  # the reward workers and the agent run on the head
        template["spec"]["runtimeClassName"] = job.spec.cluster.reward_runtime_class_name
    template["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": [
        "python", "-m", "rlhf_workers", "--stop-driver", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]}}}
    return template


def _submitter_template(job: RLHFJob, image: str, options: RenderOptions) -> dict[str, Any]:
    """KubeRay's submitter pod (K8sJobMode) fills in the command; we make it restricted and small."""
    amounts = {"cpu": options.submitter_cpu, "memory": options.submitter_memory}
    container = {
        "name": "ray-job-submitter",
        "image": image,
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "securityContext": _container_security(),
        "volumeMounts": _scratch()[1],
    }
    return {
        "metadata": {"labels": labels(job, "submitter")},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": _pod_security(),
            "containers": [container],
            "volumes": _scratch()[0],
        },
    }


def _worker_group(job: RLHFJob, name: str, group: GroupSpec, image: str, snapshot: Snapshot) -> dict[str, Any]:
    return {
        "groupName": name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        "rayStartParams": {},
        "template": _pod_template(job, name, group, "ray-worker", image, snapshot),
    }


def rayjob(job: RLHFJob, snapshot: Snapshot, digest: Optional[str], options: RenderOptions = RenderOptions()) -> dict[str, Any]:
    spec = job.spec
    cluster = spec.cluster
    image = cluster.image or options.default_image
    passthrough = {k: v for k, v in job.metadata.labels.items() if k in KUEUE_LABELS}
    queued = KUEUE_QUEUE_LABEL in passthrough

    groups = []
    if cluster.placement != "colocated" and cluster.rollout.replicas > 0:
        groups.append(_worker_group(job, "rollout", cluster.rollout, image, snapshot))
    if cluster.trainer.replicas > 0:
        groups.append(_worker_group(job, "trainer", cluster.trainer, image, snapshot))

    head_params = {"dashboard-host": "0.0.0.0"}
    if groups and not cluster.head.gpus:
        head_params["num-gpus"] = "0"
    # KubeRay builds the head Service from these ports and adds its own defaults only when the
    # list is empty, and the RayJob controller submits through the port named `dashboard`: so
    # every port KubeRay and Ray rely on is declared under KubeRay's name, beside ours.
    head_ports = [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in (
        *KUBERAY_HEAD_PORTS, (PROGRESS_PORT_NAME, PROGRESS_PORT))]

    body: dict[str, Any] = {
        "entrypoint": f"python -m rlhf_workers --config {CONFIG_DIR}/{CONFIG_FILE}",
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": _submitter_template(job, image, options),
        # The cluster goes away when the job ends; checkpoints live on the checkpoint volume.
        "shutdownAfterJobFinishes": True,
        "backoffLimit": spec.backoff_limit,
        # Kueue admits a queued job by un-suspending it, so it must start suspended.
        "suspend": bool(spec.suspend or queued),
        "rayClusterSpec": {
            "rayVersion": cluster.ray_version,
            "headGroupSpec": {
                "rayStartParams": head_params,
                "template": _head_template(job, image, snapshot, head_ports),
            },
            "workerGroupSpecs": groups,
        },
    }
    if spec.active_deadline_seconds is not None:
        body["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        body["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    annotations = {CODE_HASH_ANNOTATION: digest} if digest else None
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(job, rayjob_name(job.metadata.name), "rayjob", passthrough, annotations),
        "spec": body,
    }


# The pods that may reach a job's head from outside the job: the operator polls the progress
# endpoint (labels of the chart's Deployment), KubeRay's RayJob controller asks the dashboard
# for the job's state (labels of KubeRay's chart: helm-chart/kuberay-operator/templates/deployment.yaml).
OPERATOR_POD_LABELS = {"app.kubernetes.io/part-of": MANAGER, "app.kubernetes.io/component": "operator"}
KUBERAY_POD_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}


def _peer(pod_labels: dict[str, str], namespace: Optional[str]) -> dict[str, Any]:
    namespaces = {"matchLabels": {"kubernetes.io/metadata.name": namespace}} if namespace else {}
    return {"namespaceSelector": namespaces, "podSelector": {"matchLabels": dict(pod_labels)}}


def network_policy(job: RLHFJob, options: RenderOptions = RenderOptions()) -> dict[str, Any]:
    """Ingress to the job's pods from its own pods (Ray's ports, the submitter), the operator (the
    progress port) and KubeRay (the dashboard port) only. Policies add up: another policy of the
    namespace may admit more (a Prometheus scraping Ray's metrics port, say)."""
    own = {"matchLabels": {JOB_LABEL: job.metadata.name}}
    head = {"matchLabels": {JOB_LABEL: job.metadata.name, "app.kubernetes.io/component": "head"}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, network_policy_name(job.metadata.name), "network-policy"),
        "spec": {
            "podSelector": own,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": own}]},
                {"from": [_peer(OPERATOR_POD_LABELS, options.operator_namespace)],
                 "ports": [{"protocol": "TCP", "port": PROGRESS_PORT}]},
                {"from": [_peer(KUBERAY_POD_LABELS, options.kuberay_namespace)],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
            ],
        },
    }


def render(job: RLHFJob, code_sources: Optional[Mapping[str, str]] = None,
           options: RenderOptions = RenderOptions()) -> list[dict[str, Any]]:
    """Every object the operator creates for ``job``, in creation order.

    ``code_sources`` maps snapshot file names (reward_func.py, agent_func.py) to the source
    read from the ConfigMaps named by ``configMapRef``; see ``code_refs``.
    """
    files = snapshot_code(job.spec, code_sources or {})
    digest = code_hash(files) if files else None
    snapshot = Snapshot(snapshot_configmap_name(job.metadata.name, digest), tuple(sorted(files)))
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, snapshot.name, "snapshot",
                              annotations={CODE_HASH_ANNOTATION: digest} if digest else None),
        # Never edited: the job runs what it was created with (a spec change cannot alter it).
        "immutable": True,
        "data": {CONFIG_FILE: worker_config(job, files, digest, options).to_json(), **dict(sorted(files.items()))},
    }
    policy = [network_policy(job, options)] if job.spec.cluster.network_policy else []
    return [config_map, *policy, rayjob(job, snapshot, digest, options)]
