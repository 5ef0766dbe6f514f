"""The ``cluster`` section of the spec: the Ray head, the rollout and trainer groups, their
pods' resources, env and volumes, and what the operator and KubeRay reserve in those pods."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from .base import CEL, DNS_LABEL, FREE_FORM, INT_OR_STRING, RAW_SCHEMA, QUANTITY, SpecModel, snake_case
from .k8s import (CONFIG_MAP_KEY, DNS1123_SUBDOMAIN, EXTENDED_RESOURCE, EXTENDED_RESOURCE_CEL, LABEL_VALUE,
                  check_annotations, check_extended_resource, check_labels, config_map_key_problems,
                  object_name_problems, volume_source_problems)
from .k8s_volumes import VOLUME_SOURCE_SCHEMAS
from .names import KUBERAY_ENV, OPERATOR_ENV, RESERVED_EXACT_MOUNTS, RESERVED_MOUNTS, RESERVED_VOLUMES
from .secrets import CREDENTIAL_PROJECTIONS, credential_projection_problems
from .podsecurity import ANNOTATION_CEL, annotation_problems

# The CRD types a volume source as the core types it may be, exactly one of them.
# No projected service-account credentials (see rlhf_api.secrets): the model says the same.
NO_CREDENTIAL_PROJECTION_CEL = ("!has(self.projected) || !has(self.projected.sources) || self.projected.sources.all(s, "
                                + " && ".join(f"!has(s.{kind})" for kind in CREDENTIAL_PROJECTIONS) + ")")
VOLUME_SOURCE_SCHEMA = {RAW_SCHEMA: {"type": "object", "properties": VOLUME_SOURCE_SCHEMAS,
                                     "minProperties": 1, "maxProperties": 1,
                                     "x-kubernetes-validations": [{
                                         "rule": NO_CREDENTIAL_PROJECTION_CEL,
                                         "message": "projected service-account tokens and pod certificates are not "
                                                    "allowed: pods of an RLHFJob run user code"}]}}
LABEL_VALUES = {"additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE}}
# A mount path in the form the kubelet compares: absolute, no empty, '.' or '..' component, no trailing '/'.
MOUNT_PATH = r"^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+$"
RESERVED_MOUNT_CEL = (f"!{sorted(RESERVED_MOUNTS)}.exists(p, self == p || self.startsWith(p + '/'))"
                      f" && !(self in {sorted(RESERVED_EXACT_MOUNTS)})").replace('"', "'")


def check_volume_source(source: dict[str, Any]) -> None:
    from .podsecurity import ALLOWED_VOLUME_TYPES

    if len(source) != 1 or not isinstance(next(iter(source.values())), dict):
        raise ValueError("must be one Kubernetes volume source, e.g. {persistentVolumeClaim: {claimName: my-pvc}}")
    kind = next(iter(source))
    if kind not in ALLOWED_VOLUME_TYPES:
        raise ValueError(f"volume type {kind!r} is not allowed for pods under the restricted Pod Security Standard;"
                         f" use one of {', '.join(sorted(ALLOWED_VOLUME_TYPES))}")
    for problem in volume_source_problems(source) + credential_projection_problems(source):
        raise ValueError(problem)


def check_mount_path(path: str) -> str:
    """A path the operator does not mount itself, in the one spelling the kubelet compares."""
    if not re.search(MOUNT_PATH, path):
        raise ValueError(f"must be an absolute path without a trailing '/' or empty, '.' or '..' parts (got {path!r})")
    return check_reserved_path(path)


def check_reserved_path(path: str) -> str:
    if path.rstrip("/") in RESERVED_EXACT_MOUNTS:
        raise ValueError(f"the operator mounts a writable emptyDir at {path.rstrip('/')} in every pod (the root file"
                         " system is read-only); mount at a path inside it or elsewhere")
    for reserved in sorted(RESERVED_MOUNTS):
        if path.rstrip("/") == reserved:
            raise ValueError(f"the operator mounts {reserved} in every pod; mount elsewhere (got {path})")
        if path.startswith(reserved + "/"):
            raise ValueError(f"is under {reserved}, which the operator mounts in every pod; mount elsewhere (got {path})")
    return path

Quantity = Annotated[
    Union[int, str],
    Field(json_schema_extra={INT_OR_STRING: True, "pattern": QUANTITY.pattern, "minimum": 0}),
]


def _check_quantity(value: Any, field: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, float) or isinstance(value, bool):
        raise ValueError(f"must be a whole number or a quoted quantity such as \"500m\" or \"1.5\" (got {value!r})")
    text = str(value)
    if not QUANTITY.match(text):
        raise ValueError(f"must be a Kubernetes quantity such as 4, 500m or 16Gi (got {value!r})")
    return text


class GroupSpec(SpecModel):
    """Pods of one Ray group: how many, and what each gets."""

    replicas: Annotated[int, Field(default=1, ge=0, le=10_000, description="Pods in the group (ignored for the head).")] = 1
    gpus: Annotated[int, Field(default=0, ge=0, le=64, description="GPUs per pod.")] = 0
    cpu: Annotated[Optional[Quantity], Field(default=None, description="CPU per pod, e.g. 8 or 500m; the request and the limit, from which Ray's num-cpus follows. Default: 4 per GPU, 2 for a pod without GPUs.")] = None
    memory: Annotated[Optional[Quantity], Field(default=None, description="Memory per pod, e.g. 64Gi; the request and the limit (half of it is /dev/shm's limit). Default: 32Gi per GPU, 8Gi for a pod without GPUs.")] = None
    gpu_resource_name: Annotated[str, Field(default="nvidia.com/gpu", description="Extended resource name for GPUs.", json_schema_extra={
        "pattern": EXTENDED_RESOURCE, "maxLength": 317,
        CEL: [{"rule": EXTENDED_RESOURCE_CEL, "message": "must be an extended resource name such as nvidia.com/gpu"}]})] = "nvidia.com/gpu"
    node_selector: Annotated[dict[str, str], Field(default_factory=dict, description="Node labels the pods must match.",
                                                   json_schema_extra=LABEL_VALUES)]
    tolerations: Annotated[
        list[dict[str, Any]], Field(default_factory=list, description="Pod tolerations.", json_schema_extra={FREE_FORM: True}),
    ]
    affinity: Annotated[Optional[dict[str, Any]], Field(default=None, description="Pod affinity.", json_schema_extra={FREE_FORM: True})] = None
    labels: Annotated[dict[str, str], Field(default_factory=dict, description="Extra pod labels.", json_schema_extra=LABEL_VALUES)]
    annotations: Annotated[dict[str, str], Field(default_factory=dict, description="Extra pod annotations (none that"
                                                  " weaken the restricted profile: AppArmor unconfined, seccomp).",
                                                  json_schema_extra={CEL: ANNOTATION_CEL})]

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: Any, info: Any) -> Optional[str]:
        return _check_quantity(value, info.field_name)

    @field_validator("labels", "node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for problem in annotation_problems(value):
            raise ValueError(problem)
        return check_annotations(value)

    @field_validator("gpu_resource_name")
    @classmethod
    def _gpu_resource(cls, value: str) -> str:
        return check_extended_resource(value)


ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Names of Secrets, ConfigMaps and service accounts: DNS-1123 subdomains (the API server's NameIsDNSSubdomain).
OBJECT_NAME = {"maxLength": 253, "pattern": DNS1123_SUBDOMAIN}


def _object_name(name: str) -> str:
    for problem in object_name_problems(name):
        raise ValueError(f"Invalid value: {name!r}: {problem}")
    return name


class KeySelector(SpecModel):
    """One key of a Secret or ConfigMap in the job's namespace (core/v1 SecretKeySelector, ConfigMapKeySelector)."""

    name: Annotated[str, Field(description="Name of the Secret or ConfigMap.", json_schema_extra=OBJECT_NAME)]
    key: Annotated[str, Field(min_length=1, description="The key to select.",
                              json_schema_extra={"maxLength": 253, "pattern": CONFIG_MAP_KEY})]
    optional: Annotated[Optional[bool], Field(default=None, description="Start the pod even if the key or object is missing.")] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _object_name(value)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        for problem in config_map_key_problems(value):
            raise ValueError(f"Invalid value: {value!r}: {problem}")
        return value


class ObjectRef(SpecModel):
    """A whole Secret or ConfigMap in the job's namespace (core/v1 SecretEnvSource, ConfigMapEnvSource)."""

    name: Annotated[str, Field(description="Name of the Secret or ConfigMap.", json_schema_extra=OBJECT_NAME)]
    optional: Annotated[Optional[bool], Field(default=None, description="Start the pod even if it is missing.")] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _object_name(value)


# The EnvVarSource kinds a job may use; the others (fieldRef, resourceFieldRef, fileKeyRef) are refused by name.
UNSUPPORTED_ENV_SOURCES = ("fieldRef", "resourceFieldRef", "fileKeyRef")


class EnvVarSource(SpecModel):
    """Where a variable's value comes from: one key of a Secret or of a ConfigMap (core/v1 EnvVarSource)."""

    model_config = ConfigDict(json_schema_extra={CEL: [{
        "rule": "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) == 1",
        "message": "set exactly one of secretKeyRef or configMapKeyRef"}]})

    secret_key_ref: Annotated[Optional[KeySelector], Field(default=None, description="A key of a Secret (its creator must be allowed to read it).")] = None
    config_map_key_ref: Annotated[Optional[KeySelector], Field(default=None, description="A key of a ConfigMap.")] = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, value: Any) -> Any:
        for kind in UNSUPPORTED_ENV_SOURCES:
            if isinstance(value, dict) and kind in value:
                raise ValueError(f"{kind}: not supported in an RLHFJob; use secretKeyRef or configMapKeyRef")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "EnvVarSource":
        given = [n for n in ("secretKeyRef", "configMapKeyRef") if getattr(self, snake_case(n)) is not None]
        if len(given) != 1:
            raise ValueError("must specify exactly one of: `secretKeyRef` or `configMapKeyRef`"
                             f" (got {', '.join(given) or 'none'})")
        return self


class EnvVar(SpecModel):
    """A variable of every Ray container: a literal value, or one taken from a Secret or ConfigMap key."""

    model_config = ConfigDict(json_schema_extra={CEL: [{
        "rule": "!has(self.valueFrom) || !has(self.value) || self.value == ''",
        "message": "valueFrom may not be specified when value is not empty"}]})

    name: Annotated[str, Field(min_length=1, pattern=ENV_NAME, description="Variable name.")]
    value: Annotated[str, Field(default="", description="Value.")] = ""
    value_from: Annotated[Optional[EnvVarSource], Field(default=None, description="Take the value from a Secret or ConfigMap key, e.g. {secretKeyRef: {name: hf, key: token}}.")] = None

    @model_validator(mode="after")
    def _value_or_source(self) -> "EnvVar":
        if self.value and self.value_from is not None:
            raise ValueError("valueFrom: may not be specified when `value` is not empty; remove one of them")
        return self


class EnvFromSource(SpecModel):
    """Every key of a Secret or ConfigMap as variables (core/v1 EnvFromSource), optionally prefixed."""

    model_config = ConfigDict(json_schema_extra={CEL: [{
        "rule": "(has(self.secretRef) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) == 1",
        "message": "set exactly one of secretRef or configMapRef"}]})

    prefix: Annotated[Optional[str], Field(default=None, description="Prepended to every key, e.g. HF_.",
                                           json_schema_extra={"pattern": ENV_NAME})] = None
    secret_ref: Annotated[Optional[ObjectRef], Field(default=None, description="A Secret (its creator must be allowed to read it).")] = None
    config_map_ref: Annotated[Optional[ObjectRef], Field(default=None, description="A ConfigMap.")] = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: Optional[str]) -> Optional[str]:
        if value and not re.fullmatch(ENV_NAME, value):
            raise ValueError(f"Invalid value: {value!r}: must start with a letter, '_', '-' or '.' and hold only"
                             " letters, digits, '_', '-' and '.' (it begins every variable's name)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "EnvFromSource":
        given = [n for n in ("secretRef", "configMapRef") if getattr(self, snake_case(n)) is not None]
        if len(given) != 1:
            raise ValueError(f"must specify exactly one of: `secretRef` or `configMapRef` (got {', '.join(given) or 'none'})")
        return self


class ExtraVolume(SpecModel):
    """A volume mounted into every pod (models and data on a PVC, for example)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Volume name.")]
    mount_path: Annotated[str, Field(description="Where it is mounted.", json_schema_extra={
        "pattern": MOUNT_PATH, "maxLength": 4096, CEL: [{"rule": RESERVED_MOUNT_CEL, "message": "is mounted by the operator in every pod; pick another path"}]})]
    read_only: Annotated[bool, Field(default=True, description="Mount read-only.")] = True
    source: Annotated[dict[str, Any], Field(description="A Kubernetes volume source, e.g. {persistentVolumeClaim: {claimName: models}}.",
                                            json_schema_extra=VOLUME_SOURCE_SCHEMA)]

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        return check_mount_path(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_volume_source(value)
        return value


class ClusterSpec(SpecModel):
    """The Ray cluster the RayJob creates: image, head, rollout and trainer groups."""

    image: Annotated[Optional[str], Field(default=None, description="Worker image (default: the operator's configured worker image).")] = None
    image_pull_policy: Annotated[Optional[Literal["Always", "IfNotPresent", "Never"]], Field(default=None, description="Image pull policy.")] = None
    image_pull_secrets: Annotated[list[str], Field(default_factory=list, description="Names of image pull Secrets.")]
    placement: Annotated[
        Literal["auto", "colocated", "distributed"],
        Field(default="auto", description="colocated: rollout engine and trainer share a process and GPU (hybrid engine); auto picks it when everything fits one node."),
    ] = "auto"
    head: Annotated[GroupSpec, Field(default_factory=lambda: GroupSpec(replicas=1), description="The Ray head pod (runs the driver).")]
    rollout: Annotated[GroupSpec, Field(default_factory=GroupSpec, description="Rollout (vLLM) worker pods.")]
    trainer: Annotated[GroupSpec, Field(default_factory=GroupSpec, description="Trainer (DeepSpeed) worker pods.")]
    env: Annotated[list[EnvVar], Field(default_factory=list, description="Extra environment for every pod: values, or keys of Secrets and ConfigMaps (valueFrom).")]
    env_from: Annotated[list[EnvFromSource], Field(default_factory=list, description="Every key of a Secret or ConfigMap as environment of every pod; explicit env wins on a clash.")]
    service_account_name: Annotated[Optional[str], Field(default=None, description="Service account the Ray pods run as (workload identity); default: the namespace's default.",
                                                         json_schema_extra=OBJECT_NAME)] = None
    automount_service_account_token: Annotated[bool, Field(default=False, description="Mount the service account's API token into the Ray pods (user code can read it).")] = False
    reward_runtime_class_name: Annotated[Optional[str], Field(default=None, description=(
        "RuntimeClass (e.g. gvisor) of the head pod, where the driver runs the agent and the reward workers run the"
        " reward code: a second kernel between user code and the node (see docs/rewards.md)."),
        json_schema_extra=OBJECT_NAME)] = None
    volumes: Annotated[list[ExtraVolume], Field(default_factory=list, description="Extra volumes for every pod.")]
    priority_class_name: Annotated[Optional[str], Field(default=None, description="Pod priority class.")] = None
    network_policy: Annotated[bool, Field(default=False, description=(
        "Create a NetworkPolicy for the job: its pods accept traffic only from each other, from the operator"
        " (progress endpoint) and from KubeRay (Ray dashboard); outbound traffic is not restricted."))] = False
    ray_version: Annotated[str, Field(default="2.60.0", description="Ray version in the image.")] = "2.60.0"

    @field_validator("volumes")
    @classmethod
    def _volumes_do_not_collide(cls, volumes: list["ExtraVolume"]) -> list["ExtraVolume"]:
        names = [v.name for v in volumes]
        for i, volume in enumerate(volumes):
            if volume.name in RESERVED_VOLUMES:
                raise ValueError(f"[{i}].name: {volume.name!r} is used by the operator; pick another name")
            if volume.name in names[:i]:
                raise ValueError(f"[{i}].name: {volume.name!r} is given twice")
        return volumes

    @field_validator("env")
    @classmethod
    def _env_not_kuberays(cls, env: list["EnvVar"]) -> list["EnvVar"]:
        names = [var.name for var in env]
        for i, var in enumerate(env):
            if var.name in names[:i]:
                raise ValueError(f"[{i}].name: {var.name} is given twice (pods take each variable once)")
            if var.name in KUBERAY_ENV:
                raise ValueError(f"[{i}].name: {var.name} is set by KubeRay on every Ray pod (the driver joins the "
                                 "cluster through it); remove it")
            if var.name in OPERATOR_ENV:
                raise ValueError(f"[{i}].name: {var.name} is set by the operator; remove it")
        return env

    @field_validator("reward_runtime_class_name")
    @classmethod
    def _runtime_class_is_an_object_name(cls, value: Optional[str]) -> Optional[str]:
        return value if value is None else _object_name(value)

    @field_validator("service_account_name")
    @classmethod
    def _service_account(cls, value: Optional[str]) -> Optional[str]:
        return value if value is None else _object_name(value)

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not DNS_LABEL.match(name):
                raise ValueError(f"imagePullSecrets entries are Secret names (got {name!r})")
        return value

    def plain_env(self) -> dict[str, str]:
        """The ``env`` entries with a literal value, which the spec shows anyway: what the reward
        sandbox passes on to user code. Secret- and ConfigMap-backed ones (``valueFrom``,
        ``envFrom``) stay with the worker."""
        return {e.name: e.value for e in self.env if e.value_from is None}
