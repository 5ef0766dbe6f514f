"""The RayJob mirror: KubeRay's view of a job, carried into its RLHFJob's status.

    rayjob_changed  RayJob status moved: mirror it into the RLHFJob's phase, conditions and Events

What the phase becomes is decided by the pure status machine (status.mirror); this module only
finds the owner, waits for launch to have recorded the RayJob, and writes through write_status.
The background loop's resync calls ``mirror_rayjob`` too, for events that were missed.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import kopf
from rlhf_api.advice import final_model_path
from rlhf_api.jobstatus import TERMINAL_PHASES, Phase
from rlhf_api.names import GROUP, KIND

from . import status as st
from .context import OperatorContext
from .writes import Events, post, write_status

LAUNCH_RECORD_WAIT = 30.0  # seconds the RayJob mirror waits for launch to record rayJobName


def owner_name(rayjob: dict[str, Any]) -> Optional[str]:
    """The name of the RLHFJob that owns ``rayjob``, if one does."""
    for ref in (rayjob.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref.get("name")
    return None


def reported(body: kopf.Body, type: Optional[str], **_: Any) -> bool:
    """Whether a RayJob event is worth mirroring (rayjob_changed's ``when`` filter)."""
    # Until KubeRay reports, there is nothing to mirror (launch already set Pending);
    # filtering here keeps those events off the handler threads.
    return type == "DELETED" or bool((body.get("status") or {}).get("jobDeploymentStatus"))


def _deleted_while_running(rayjob: dict[str, Any], job: dict[str, Any], events: Events) -> Optional[dict[str, Any]]:
    """The owner's status after its RayJob was deleted: Failed, unless it finished or goes away itself."""
    current = job.get("status") or {}
    if current.get("phase") in TERMINAL_PHASES or job["metadata"].get("deletionTimestamp"):
        return None  # finished, or the job itself is going away (foreground deletion)
    message = f"RayJob {rayjob['metadata']['name']} was deleted while the job was {current.get('phase')}"
    events.append(("Warning", st.RAYJOB_MISSING, message))
    conditions = st.phase_conditions(list(current.get("conditions") or []),
                                     st.Verdict(Phase.Failed.value, st.RAYJOB_MISSING, message),
                                     job["metadata"].get("generation"))
    return {"phase": Phase.Failed.value, "reason": st.RAYJOB_MISSING, "message": message,
            "conditions": conditions, "completionTime": st.now_rfc3339()}


def mirror_rayjob(memo: OperatorContext, namespace: str, owner: str, rayjob: dict[str, Any],
                  deleted: bool = False) -> None:
    events: Events = []
    # launch records rayJobName with kopf's status patch, which lands just after it created
    # the RayJob; a state reported in between waits for it, so the two writes never race.
    wait_until = time.monotonic() + LAUNCH_RECORD_WAIT
    waiting = False

    def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
        nonlocal waiting
        events.clear()
        current = job.get("status") or {}
        waiting = not current.get("rayJobName") and time.monotonic() < wait_until
        if waiting:
            return None
        if deleted:
            return _deleted_while_running(rayjob, job, events)
        outcome = st.mirror(current, rayjob, job["metadata"].get("generation"))
        events.extend(outcome.events)
        fields = dict(outcome.status or {})
        if fields.get("phase") == Phase.Succeeded.value and not current.get("finalModel"):
            # The driver reports its final model while it lingers; should no poll have caught that, the
            # path follows from the spec, where the model outlives the Ray cluster.
            path = final_model_path(job.get("spec") or {})
            if path:
                fields["finalModel"] = path
        return fields or None

    job = write_status(memo, namespace, owner, change)
    while waiting and job is not None:
        time.sleep(0.05)
        job = write_status(memo, namespace, owner, change)
    if job is not None and events:
        post(memo, job, events)


def rayjob_changed(body: kopf.Body, type: Optional[str], namespace: str, memo: OperatorContext, **_: Any) -> None:
    owner = owner_name(body)
    if owner is not None:
        mirror_rayjob(memo, namespace, owner, dict(body), deleted=type == "DELETED")
