"""The RLHFJob's status as the API stores it: phases, conditions, progress. The CRD's status
schema is generated from ``RLHFJobStatus``; the state machine that fills it is the operator's."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from .base import SpecModel

# Condition types (status.conditions[].type).
VALIDATED = "Validated"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
STALLED = "Stalled"
DEGRADED = "Degraded"  # True while the API server keeps failing the operator's calls (retrying)
REWARD_FAULTS = "RewardFaults"  # True once the driver stopped on too many reward faults (also the Failed reason)
# The preflight pod's verdict on the reward/agent code, before any RayJob: True (also the Failed
# reason) when the code failed, False once it passed, Unknown while the check runs.
REWARD_CHECK_FAILED = "RewardCheckFailed"

# The operator's own reasons; the others are KubeRay's, taken from the RayJob.
VALIDATION_FAILED = "ValidationFailed"
CODE_NOT_FOUND = "CodeNotFound"
CHILD_CONFLICT = "ChildConflict"
SPEC_IMMUTABLE = "SpecImmutable"
RAYJOB_CREATED = "RayJobCreated"
RAYJOB_MISSING = "RayJobMissing"
# The API server refused to create a child (the job is Failed; retrying would not help).
KUBERAY_NOT_INSTALLED = "KubeRayNotInstalled"
CHILD_FORBIDDEN = "ChildForbidden"
CHILD_INVALID = "ChildInvalid"
CHILD_TOO_LARGE = "ChildTooLarge"
CHILD_REFUSED = "ChildRefused"
# The API server's answers were transient (outage, overload, conflict) past a bound; and then not.
TRANSIENT_API_ERRORS = "TransientAPIErrors"
API_RECOVERED = "APIRecovered"
# The reward/agent code, run once in the CPU-only preflight pod before the RayJob (REWARD_CHECK_FAILED above).
CHECKING_CODE = "CheckingCode"
CODE_CHECK_PASSED = "CodeCheckPassed"

# metav1.Condition's own validation (k8s.io/apimachinery/pkg/apis/meta/v1/types.go), which the
# CRD repeats so that the API server refuses what Kubernetes' own condition type would.
CONDITION_TYPE_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
CONDITION_TYPE_MAX = 316
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_REASON_MAX = 1024
CONDITION_MESSAGE_MAX = 32768


class Phase(str, Enum):
    Pending = "Pending"
    Provisioning = "Provisioning"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Suspended = "Suspended"
    Retrying = "Retrying"


TERMINAL_PHASES = (Phase.Succeeded.value, Phase.Failed.value)


_DATE_TIME = {"format": "date-time"}
_INT64 = {"format": "int64"}


class Condition(SpecModel):
    """A condition as metav1.Condition defines it: reason is required and never empty."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    type: str = Field(max_length=CONDITION_TYPE_MAX, pattern=CONDITION_TYPE_PATTERN,
                      description="Validated, RewardCheckFailed, Running, Suspended, Succeeded, Failed,"
                                  " Stalled, Degraded or RewardFaults.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=CONDITION_REASON_MAX, pattern=CONDITION_REASON_PATTERN,
                        description="One CamelCase word a program can match on.")
    message: str = Field(max_length=CONDITION_MESSAGE_MAX, description="What happened, for people.")
    last_transition_time: str = Field(json_schema_extra=_DATE_TIME, description="When status last changed.")
    observed_generation: Optional[int] = Field(default=None, ge=0, json_schema_extra=_INT64,
                                               description="The spec generation this condition was set for.")


class RewardErrors(SpecModel):
    """Reward calls that ended other than ok (rlhf_api.progress.RewardErrorCounts, as stored)."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    raised: Optional[int] = Field(default=None, json_schema_extra=_INT64, description="Calls that raised.")
    timeout: Optional[int] = Field(default=None, json_schema_extra=_INT64, description="Calls past reward.timeoutSeconds.")
    invalid: Optional[int] = Field(default=None, json_schema_extra=_INT64, description="Calls whose output broke the contract.")


class Progress(SpecModel):
    """Training progress, as last read from the worker's progress endpoint (rlhf_api.progress)."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    step: Optional[int] = Field(default=None, description="Training steps done.")
    total_steps: Optional[int] = None
    episode: Optional[int] = None
    reward_mean: Optional[float] = Field(default=None, description="Mean reward of the last step's samples.")
    score_mean: Optional[float] = Field(default=None, description="Mean score (as the reward function reported it).")
    kl: Optional[float] = Field(default=None, description="Mean KL to the reference policy in the last step.")
    samples_per_second: Optional[float] = None
    last_weight_sync: Optional[str] = Field(default=None, description="When the rollout engines last got new weights.")
    heartbeat: Optional[str] = Field(default=None, description="When the training loop last reported; a stale one "
                                                                "sets the Stalled condition.")
    reward_errors: Optional[RewardErrors] = Field(default=None, description="Reward calls that faulted since the run"
                                                                            " started, by how they ended.")
    reward_error_rate: Optional[float] = Field(default=None, description="Faulted share of the samples over the fault"
                                                                         " window (compared with reward.maxErrorRate).")
    updated: Optional[str] = None


# The CRD's status schema is generated from this model (crd.status_schema).
class RLHFJobStatus(SpecModel):
    """Observed state, written by the operator only."""

    # kopf keeps its own bookkeeping under status.kopf; it must survive the API server's pruning.
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True,
                              json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    phase: Optional[Phase] = Field(default=None, description="Where the job stands.")
    reason: Optional[str] = Field(default=None, description="Why it is in this phase, as one CamelCase word.")
    message: Optional[str] = None
    conditions: Optional[list[Condition]] = Field(default=None, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    ray_job_name: Optional[str] = Field(default=None, description="The RayJob running this job.")
    ray_cluster_name: Optional[str] = None
    dashboard_url: Annotated[Optional[str], Field(
        default=None, alias="dashboardURL",
        description="The Ray dashboard of the job's cluster, as KubeRay reports it (the head Service's host:port; "
                    "kubectl port-forward svc/CLUSTER-head-svc 8265 reaches it from outside)."),
    ] = None
    code_hash: Optional[str] = Field(default=None, description="Hash of the snapshotted reward/agent code.")
    progress: Optional[Progress] = None
    last_checkpoint: Optional[str] = Field(default=None, description="Path of the newest checkpoint.")
    final_model: Optional[str] = Field(default=None, description="Where the trained model is (Hugging Face format), "
                                       "on the checkpoint volume.")
    attempts: Optional[int] = Field(default=None, description="Attempts made so far: the first run plus KubeRay's retries.")
    start_time: Optional[str] = Field(default=None, json_schema_extra=_DATE_TIME)
    completion_time: Optional[str] = Field(default=None, json_schema_extra=_DATE_TIME)
    observed_generation: Optional[int] = Field(default=None, json_schema_extra=_INT64,
                                               description="The spec generation the operator last acted on.")
