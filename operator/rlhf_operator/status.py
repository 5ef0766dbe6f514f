"""The RLHFJob status machine: pure functions from observations to status.

The phase is derived from the RayJob's ``jobDeploymentStatus`` first and its ``jobStatus``
second: the deployment status is the one KubeRay keeps consistent (a deadline or a
submitter failure marks the deployment Failed while ``jobStatus`` may still say RUNNING,
kuberay#2314).

    Pending → Provisioning → Running → Succeeded | Failed
                   ↕             ↕
               Suspended     Retrying → Provisioning …

Conditions follow metav1.Condition: type, status, reason, message, lastTransitionTime
(changes only when status flips), observedGeneration; the reason is never empty, also on a
condition that is off (it says why: Running=False, reason Completed).

Before the RayJob exists, the API server may refuse to create a child (``refusal``: the job
fails, with the fix in the message) or keep failing transiently (``api_degraded``: the
Degraded condition, while the operator retries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from rlhf_api.jobstatus import (API_RECOVERED, CHECKING_CODE, CHILD_CONFLICT, CHILD_FORBIDDEN,  # noqa: F401
                                CHILD_INVALID, CODE_CHECK_PASSED, REWARD_CHECK_FAILED,
                                CHILD_REFUSED, CHILD_TOO_LARGE, CODE_NOT_FOUND, CONDITION_MESSAGE_MAX,
                                CONDITION_REASON_MAX, CONDITION_REASON_PATTERN, DEGRADED, FAILED,
                                KUBERAY_NOT_INSTALLED, RAYJOB_CREATED, RAYJOB_MISSING, REWARD_FAULTS, RUNNING,
                                SPEC_IMMUTABLE,
                                STALLED, SUCCEEDED, SUSPENDED, TRANSIENT_API_ERRORS, VALIDATED, VALIDATION_FAILED,
                                Phase)
from rlhf_api.names import KUEUE_QUEUE_LABEL

# Reasons a job has before its RayJob exists, which launch replaces once it creates one.
PRE_LAUNCH_REASONS = (CODE_NOT_FOUND, TRANSIENT_API_ERRORS, CHECKING_CODE)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Observation:
    """What the operator reads off the RayJob it owns."""

    deployment: str = ""          # status.jobDeploymentStatus
    job: str = ""                 # status.jobStatus
    reason: str = ""              # status.reason
    message: str = ""             # status.message
    failed: int = 0               # status.failed
    succeeded: int = 0            # status.succeeded
    backoff_limit: int = 0        # spec.backoffLimit
    suspend: bool = False         # spec.suspend
    queued: bool = False          # created for Kueue (queue-name label)
    cluster_name: Optional[str] = None
    dashboard_url: Optional[str] = None
    start_time: Optional[str] = None
    end_time: Optional[str] = None

    @classmethod
    def of(cls, rayjob: dict[str, Any]) -> "Observation":
        status = rayjob.get("status") or {}
        spec = rayjob.get("spec") or {}
        labels = (rayjob.get("metadata") or {}).get("labels") or {}
        return cls(
            deployment=status.get("jobDeploymentStatus") or "",
            job=status.get("jobStatus") or "",
            reason=status.get("reason") or "",
            message=status.get("message") or "",
            failed=int(status.get("failed") or 0),
            succeeded=int(status.get("succeeded") or 0),
            backoff_limit=int(spec.get("backoffLimit") or 0),
            suspend=bool(spec.get("suspend")),
            queued=KUEUE_QUEUE_LABEL in labels,
            cluster_name=status.get("rayClusterName") or None,
            dashboard_url=status.get("dashboardURL") or None,
            start_time=status.get("startTime") or None,
            end_time=status.get("endTime") or None,
        )


@dataclass(frozen=True)
class Verdict:
    phase: str
    reason: str
    message: str


def judge(obs: Observation) -> Verdict:
    """The phase, reason and message that a RayJob observation means for the RLHFJob."""
    d, j = obs.deployment, obs.job
    if d in ("", "New"):
        if obs.suspend:
            return _suspended(obs)
        return Verdict(Phase.Pending.value, "RayJobCreated", "RayJob created; waiting for KubeRay to start the Ray cluster")
    if obs.suspend and d in ("Initializing", "Waiting", "Running"):
        return _suspended(obs)  # KubeRay checks suspend only after New → Initializing
    if d in ("Initializing", "Waiting"):
        return Verdict(Phase.Provisioning.value, "ClusterProvisioning", "Ray cluster is starting")
    if d == "Running":
        if j == "RUNNING":
            return Verdict(Phase.Running.value, "Training", "training is running")
        if j in ("SUCCEEDED", "FAILED", "STOPPED"):
            return Verdict(Phase.Running.value, "Finishing", f"Ray job {j.lower()}; waiting for KubeRay to finish the deployment")
        return Verdict(Phase.Provisioning.value, "JobPending", "Ray job submitted; waiting for its driver to start")
    if d == "Complete":
        if j == "SUCCEEDED":
            return Verdict(Phase.Succeeded.value, "Completed", "training finished")
        return Verdict(Phase.Failed.value, "JobStopped", obs.message or f"Ray job ended as {j or 'unknown'} without succeeding")
    if d == "Failed":
        # Final: KubeRay writes Retrying instead of Failed, in the same update, when
        # backoffLimit leaves a retry, so a stored Failed is never retried.
        return Verdict(Phase.Failed.value, obs.reason or "AppFailed", obs.message or "Ray job failed")
    if d == "Retrying":
        reason = obs.reason or "Retrying"
        detail = f": {obs.message}" if obs.message else ""
        return Verdict(Phase.Retrying.value, reason, f"attempt {obs.failed} failed ({reason}){detail}; retrying with a new Ray cluster")
    if d == "ValidationFailed":
        return Verdict(Phase.Failed.value, "ValidationFailed", obs.message or "KubeRay rejected the RayJob")
    if d in ("Suspending", "Suspended"):
        return _suspended(obs)
    return Verdict(Phase.Pending.value, "Unknown", f"unrecognized RayJob deployment status {d!r}")


def _suspended(obs: Observation) -> Verdict:
    if obs.queued:
        return Verdict(Phase.Suspended.value, "WaitingForAdmission", "queued: waiting for Kueue to admit the job")
    if obs.deployment == "Suspending":
        return Verdict(Phase.Suspended.value, "Suspending", "suspending: the Ray cluster is being deleted")
    return Verdict(Phase.Suspended.value, "Suspended", "suspended; set spec.suspend: false to resume from the last checkpoint")


def attempts(obs: Observation) -> int:
    """Attempts made so far: finished ones plus the one in progress."""
    if obs.deployment in ("", "New") and not (obs.failed or obs.succeeded):
        return 0
    finished = obs.failed + obs.succeeded
    in_progress = obs.deployment not in ("Complete", "Failed", "ValidationFailed", "Suspended", "Suspending")
    return finished + (1 if in_progress else 0)


# --------------------------------------------------------------------------- conditions


def condition_reason(reason: str) -> str:
    """``reason`` as metav1.Condition accepts it: one word of letters, digits, ``_ , :``.

    The operator's own reasons are such words already; KubeRay's reasons, carried into the
    conditions, are too, but nothing guarantees it, and a status the API server refuses
    would not be written at all. Anything else becomes CamelCase words; nothing, Unknown.
    """
    if re.fullmatch(CONDITION_REASON_PATTERN, reason) and len(reason) <= CONDITION_REASON_MAX:
        return reason
    words = re.findall(r"[A-Za-z0-9]+", reason)
    camel = "".join(w[:1].upper() + w[1:] for w in words).lstrip("0123456789")
    return (camel[:1].upper() + camel[1:CONDITION_REASON_MAX]) or "Unknown"


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | str, reason: str, message: str,
                  generation: Optional[int], now: Optional[str] = None) -> list[dict[str, Any]]:
    """A new list with condition ``type_`` set; lastTransitionTime moves only when status flips.
    The reason and message are made to fit metav1.Condition (condition_reason; 32 KiB)."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    now = now or now_rfc3339()
    reason, message = condition_reason(reason), message[:CONDITION_MESSAGE_MAX]
    result, found = [], False
    for cond in conditions:
        if cond.get("type") != type_:
            result.append(cond)
            continue
        found = True
        changed = cond.get("status") != value
        result.append({
            "type": type_, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": now if changed else cond.get("lastTransitionTime", now),
            "observedGeneration": generation,
        })
    if not found:
        result.append({"type": type_, "status": value, "reason": reason, "message": message,
                       "lastTransitionTime": now, "observedGeneration": generation})
    return [{k: v for k, v in c.items() if v is not None} for c in result]


def get_condition(conditions: list[dict[str, Any]], type_: str) -> Optional[dict[str, Any]]:
    return next((c for c in conditions if c.get("type") == type_), None)


def phase_conditions(conditions: list[dict[str, Any]], verdict: Verdict, generation: Optional[int],
                     now: Optional[str] = None) -> list[dict[str, Any]]:
    """Running / Suspended / Succeeded / Failed conditions that agree with the phase.

    The one that is on and those that are off carry the verdict's reason and message alike:
    the phase's reason is why each is what it is (Running=False because Completed), and
    metav1.Condition has no empty reason.
    """
    for type_, phase in ((RUNNING, Phase.Running), (SUSPENDED, Phase.Suspended),
                         (SUCCEEDED, Phase.Succeeded), (FAILED, Phase.Failed)):
        on = verdict.phase == phase.value
        if on or get_condition(conditions, type_) is not None:
            conditions = set_condition(conditions, type_, on, verdict.reason, verdict.message, generation, now)
    stalled = get_condition(conditions, STALLED)
    if verdict.phase != Phase.Running.value and stalled is not None and stalled.get("status") == "True":
        conditions = set_condition(conditions, STALLED, False, "NotRunning", "the job is not running", generation, now)
    return conditions


@dataclass
class StatusPatch:
    """A status update for the RLHFJob plus the Events that tell its story."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def mirror(current: dict[str, Any], rayjob: dict[str, Any], generation: Optional[int],
           now: Optional[str] = None) -> StatusPatch:
    """The status patch that reflects ``rayjob`` in an RLHFJob whose status is ``current``."""
    now = now or now_rfc3339()
    obs = Observation.of(rayjob)
    verdict = reward_faults_verdict(judge(obs), current)
    patch = StatusPatch()
    status = patch.status
    if current.get("phase") in (Phase.Succeeded.value, Phase.Failed.value):
        return patch  # terminal phases are final
    if current.get("phase") != verdict.phase or current.get("reason") != verdict.reason:
        status.update(phase=verdict.phase, reason=verdict.reason, message=verdict.message)
        failing = verdict.phase in (Phase.Failed.value, Phase.Retrying.value)
        patch.events.append(("Warning" if failing else "Normal", verdict.reason, f"{verdict.phase}: {verdict.message}"))
    elif current.get("message") != verdict.message:
        status["message"] = verdict.message
    conditions = phase_conditions(list(current.get("conditions") or []), verdict, generation, now)
    faults = get_condition(conditions, REWARD_FAULTS)
    if verdict.phase == Phase.Retrying.value and faults is not None and faults.get("status") == "True":
        # KubeRay starts a new attempt: the condition speaks of the attempt that ended
        conditions = set_condition(conditions, REWARD_FAULTS, False, "NewAttempt",
                                   f"the attempt that stopped on reward faults is being retried ({faults.get('message')})",
                                   generation, now)
    if conditions != (current.get("conditions") or []):
        status["conditions"] = conditions
    # attempts never decreases (KubeRay resets its counters' context on suspend and retries).
    for key, value in (("rayClusterName", obs.cluster_name), ("dashboardURL", obs.dashboard_url),
                       ("attempts", max(attempts(obs), int(current.get("attempts") or 0)))):
        if value is not None and current.get(key) != value:
            status[key] = value
    if obs.start_time and not current.get("startTime"):
        status["startTime"] = obs.start_time
    if verdict.phase in (Phase.Succeeded.value, Phase.Failed.value) and not current.get("completionTime"):
        status["completionTime"] = obs.end_time or now
    return patch


def stall_update(current: dict[str, Any], heartbeat: Optional[str], stall_seconds: float, generation: Optional[int],
                 now: Optional[datetime] = None) -> Optional[tuple[list[dict[str, Any]], Optional[tuple[str, str, str]]]]:
    """New conditions (and an Event) when the Stalled condition must change; None when it need not."""
    now = now or datetime.now(timezone.utc)
    beat = parse_time(heartbeat)
    age = (now - beat).total_seconds() if beat else None
    stalled = age is None or age > stall_seconds
    conditions = list(current.get("conditions") or [])
    existing = get_condition(conditions, STALLED)
    if existing is None and not stalled:
        return None
    if existing is not None and (existing.get("status") == "True") == stalled:
        return None
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if stalled:
        message = (f"no progress heartbeat for {int(age)} s (limit {int(stall_seconds)} s)" if age is not None
                   else "the progress endpoint gave no heartbeat")
        conditions = set_condition(conditions, STALLED, True, "NoHeartbeat", message, generation, stamp)
        return conditions, ("Warning", "Stalled", message)
    conditions = set_condition(conditions, STALLED, False, "HeartbeatResumed", "progress heartbeat is fresh", generation, stamp)
    return conditions, ("Normal", "Resumed", "progress heartbeat resumed")


# --------------------------------------------------------------------------- progress and reward faults


def progress_of(report: Any) -> dict[str, Any]:
    """``status.progress`` as a driver's ProgressReport (rlhf_api.progress) tells it; unset fields left out."""
    errors = report.reward_errors
    fields = {
        "step": report.step, "totalSteps": report.total_steps, "episode": report.episode,
        "rewardMean": report.reward_mean, "scoreMean": report.score_mean, "kl": report.kl,
        "samplesPerSecond": report.samples_per_second, "lastWeightSync": report.last_weight_sync,
        "heartbeat": report.heartbeat or None,
        "rewardErrors": None if errors is None else {"raised": errors.raised, "timeout": errors.timeout,
                                                     "invalid": errors.invalid},
        "rewardErrorRate": report.reward_error_rate,
    }
    return {k: v for k, v in fields.items() if v is not None}


def reward_faults_update(current: dict[str, Any], report: Any, generation: Optional[int],
                         now: Optional[str] = None) -> Optional[tuple[list[dict[str, Any]], tuple[str, str, str]]]:
    """RewardFaults=True (and a Warning Event) when the driver reports that it stopped on reward
    faults (state failed, failureReason RewardFaults), quoting its message; None otherwise or
    when the condition already says so. The condition is never turned off: the faults happened."""
    if report is None or report.state != "failed" or report.failure_reason != REWARD_FAULTS:
        return None
    message = report.message or "the reward faulted on more samples than reward.maxErrorRate allows"
    conditions = list(current.get("conditions") or [])
    existing = get_condition(conditions, REWARD_FAULTS)
    if existing is not None and existing.get("status") == "True" and existing.get("message") == message[:CONDITION_MESSAGE_MAX]:
        return None
    conditions = set_condition(conditions, REWARD_FAULTS, True, REWARD_FAULTS, message, generation, now)
    return conditions, ("Warning", REWARD_FAULTS, message)


def reward_faults_verdict(verdict: Verdict, current: dict[str, Any]) -> Verdict:
    """A Failed verdict of a job whose driver stopped on reward faults says so: reason RewardFaults
    and the driver's message, instead of KubeRay's generic failure of the Ray job."""
    faults = get_condition(list(current.get("conditions") or []), REWARD_FAULTS)
    if verdict.phase != Phase.Failed.value or faults is None or faults.get("status") != "True":
        return verdict
    return Verdict(Phase.Failed.value, REWARD_FAULTS, faults.get("message") or verdict.message)


# --------------------------------------------------------------------------- the code check before the RayJob


def code_check_passed(current: dict[str, Any]) -> bool:
    """Whether the job's code passed its check already (a relaunch does not run it again)."""
    check = get_condition(list(current.get("conditions") or []), REWARD_CHECK_FAILED)
    return check is not None and check.get("status") == "False"


def checking_code(current: dict[str, Any], pod: str, detail: str, generation: Optional[int],
                  now: Optional[str] = None) -> Optional[dict[str, Any]]:
    """Pending/CheckingCode while the check pod runs (RewardCheckFailed=Unknown); None when the
    status says so already or the job has moved on."""
    if current.get("phase") not in (None, Phase.Pending.value) or current.get("rayJobName"):
        return None
    message = f"checking the reward/agent code in pod {pod} (CPU only) before creating the RayJob: {detail}"
    conditions = set_condition(list(current.get("conditions") or []), REWARD_CHECK_FAILED, "Unknown", CHECKING_CODE,
                               message, generation, now)
    fields = {"phase": Phase.Pending.value, "reason": CHECKING_CODE, "message": message, "conditions": conditions}
    return {k: v for k, v in fields.items() if current.get(k) != v} or None


def code_check_passed_status(current: dict[str, Any], message: str, generation: Optional[int],
                             now: Optional[str] = None) -> dict[str, Any]:
    """RewardCheckFailed=False, with what the check says, once the code passed."""
    return {"conditions": set_condition(list(current.get("conditions") or []), REWARD_CHECK_FAILED, False,
                                        CODE_CHECK_PASSED, message, generation, now)}


def code_check_failed_status(current: dict[str, Any], error: str, generation: Optional[int],
                             now: Optional[str] = None) -> dict[str, Any]:
    """Failed/RewardCheckFailed: the code failed its check, quoted; no RayJob was created."""
    now = now or now_rfc3339()
    message = (f"the check of the reward/agent code failed before any GPU was taken, so no RayJob was created:"
               f" {error}; fix it and re-create the RLHFJob (spec.preflight: false skips the check)")
    verdict = Verdict(Phase.Failed.value, REWARD_CHECK_FAILED, message)
    conditions = set_condition(list(current.get("conditions") or []), REWARD_CHECK_FAILED, True, REWARD_CHECK_FAILED,
                               message, generation, now)
    return {"phase": verdict.phase, "reason": verdict.reason, "message": message, "completionTime": now,
            "conditions": phase_conditions(conditions, verdict, generation, now), "observedGeneration": generation}


# --------------------------------------------------------------------------- API refusals and outages


@dataclass(frozen=True)
class ApiAnswer:
    """How the API server answered a request that failed: its metav1.Status, as far as it sent one."""

    code: int                 # HTTP status
    reason: str = ""          # Status.reason: NotFound, Forbidden, Invalid, ...
    message: str = ""         # Status.message: the API server's own words
    details_kind: str = ""    # Status.details.kind: the resource the answer is about (namespaces, ...)


QUOTED_MAX = 4096  # of the API server's message, in a condition (an Event keeps 1 KiB of the whole)
_RESOURCES = {"RayJob": "rayjobs.ray.io", "ConfigMap": "configmaps"}


def refusal(answer: ApiAnswer, kind: str, api_version: str, name: str, namespace: str) -> Verdict:
    """The Failed verdict for a child that the API server refused to create, and the fix.

    Only refusals get here (kube.is_transient sorts them out): retrying the same request would
    get the same answer, so the job ends instead of waiting for ever. The message says what is
    wrong and what to do first, then quotes the API server. A 404 for the RayJob that is not
    about a missing namespace means the RayJob kind is not served: KubeRay's CRD is missing.
    """
    what = f"{kind} {name}"
    quoted = f"the API server answered {answer.code} {answer.reason or 'error'}: {answer.message[:QUOTED_MAX]}"
    again = "then delete and re-create this RLHFJob"
    text = answer.message.lower()
    if answer.code == 404 and kind == "RayJob" and answer.details_kind != "namespaces":
        return Verdict(Phase.Failed.value, KUBERAY_NOT_INSTALLED,
                       f"KubeRay is not installed: the RayJob kind {api_version} is unknown to this cluster;"
                       f" install the KubeRay operator with its CRDs, {again} ({quoted})")
    if answer.code == 403 and "being terminated" in text:
        return Verdict(Phase.Failed.value, CHILD_REFUSED,
                       f"namespace {namespace} is being deleted, and {what} with it ({quoted})")
    if answer.code == 403 and "exceeded quota" in text:
        return Verdict(Phase.Failed.value, CHILD_FORBIDDEN,
                       f"a ResourceQuota in namespace {namespace} refuses {what}: raise the quota or free what it"
                       f" counts, {again} ({quoted})")
    if answer.code == 403:
        resource = _RESOURCES.get(kind, f"{kind.lower()}s")
        return Verdict(Phase.Failed.value, CHILD_FORBIDDEN,
                       f"the operator may not create {what} in namespace {namespace}: allow its service account to"
                       f" create {resource} there (the Helm chart's RBAC does, in the namespaces it watches) or lift"
                       f" the policy that refused it, {again} ({quoted})")
    if answer.code in (413, 422, 500) and ("too large" in text or "too long" in text):
        return Verdict(Phase.Failed.value, CHILD_TOO_LARGE,
                       f"{what} is larger than the API server stores: make the inline reward or agent code smaller"
                       f" (or take it from a ConfigMap with configMapRef), {again} ({quoted})")
    if answer.code in (400, 422):
        return Verdict(Phase.Failed.value, CHILD_INVALID,
                       f"the API server found {what} invalid: correct the spec field it names (a field the operator"
                       f" sets itself means the cluster's {kind} CRD is not the version the operator renders for),"
                       f" {again} ({quoted})")
    return Verdict(Phase.Failed.value, CHILD_REFUSED, f"the API server refused to create {what}, {again} ({quoted})")


def refused_status(current: dict[str, Any], verdict: Verdict, generation: Optional[int],
                   now: Optional[str] = None) -> dict[str, Any]:
    """The status fields of a job that ends because a child was refused: Failed, with the Failed
    condition, and Degraded cleared (the API server did answer)."""
    now = now or now_rfc3339()
    conditions = phase_conditions(list(current.get("conditions") or []), verdict, generation, now)
    return {"phase": verdict.phase, "reason": verdict.reason, "message": verdict.message,
            "conditions": api_recovered(conditions, generation, now), "completionTime": now,
            "observedGeneration": generation}


def api_degraded(conditions: list[dict[str, Any]], error: str, failing_for: float, retry_in: float,
                 generation: Optional[int], now: Optional[str] = None) -> list[dict[str, Any]]:
    """Degraded=True: the API server has failed a handler's calls for this job, transiently (an
    outage, overload, a conflict), for longer than the operator lets pass in silence. The
    handler keeps retrying; the condition says so, and what the last answer was."""
    message = (f"the Kubernetes API has failed the operator's calls for this job for {int(failing_for)} s"
               f" (last: {error}); still retrying, next in {retry_in:g} s")
    return set_condition(conditions, DEGRADED, True, TRANSIENT_API_ERRORS, message, generation, now)


def api_recovered(conditions: list[dict[str, Any]], generation: Optional[int],
                  now: Optional[str] = None) -> list[dict[str, Any]]:
    """Degraded=False once a handler got through; the conditions unchanged when it was not True
    (a job that never saw an outage gets no Degraded condition at all)."""
    degraded = get_condition(conditions, DEGRADED)
    if degraded is None or degraded.get("status") != "True":
        return conditions
    return set_condition(conditions, DEGRADED, False, API_RECOVERED, "the Kubernetes API answers again",
                         generation, now)
