"""The one way the operator writes an RLHFJob's status, and posts its Events.

Every handler that changes a job's status hands ``write_status`` a ``change``: a function of the
job as last read that returns the fields to set (or None for nothing). The write is guarded by
resourceVersion, so a handler working from an older snapshot never overwrites what another wrote;
each write also keeps the active-jobs table (``note``) in step with what was written.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import kopf
from rlhf_api.jobstatus import TERMINAL_PHASES
from rlhf_api.names import GROUP, KIND, VERSION

from .context import OperatorContext

Change = Callable[[dict[str, Any]], Optional[dict[str, Any]]]
Events = list[tuple[str, str, str]]  # (type, reason, message)


def job_ref(job: Any) -> dict[str, Any]:
    """What an Event needs of an RLHFJob (from a kopf body or a dict read from the API)."""
    meta = job["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")}}


def note(memo: OperatorContext, namespace: str, name: str, status: Optional[dict[str, Any]]) -> None:
    """Record a job's status as last written or seen: in the active-jobs table while it is not
    finished, and by phase in the metrics. ``status`` None: the job is gone."""
    key = (namespace, name)
    if status is None:  # the job is gone
        memo.active.pop(key, None)
        memo.metrics.forget(namespace, name)
        return
    memo.metrics.note_job(namespace, name, status)
    if status.get("phase") in TERMINAL_PHASES:
        memo.active.pop(key, None)
    else:
        memo.active[key] = status


def forget(memo: OperatorContext, namespace: str, name: str, **_: Any) -> None:
    """kopf handler, RLHFJob deleted: it leaves the active-jobs table and the metrics at once."""
    note(memo, namespace, name, None)


def gone(type: Optional[str] = None, **_: Any) -> bool:  # noqa: A002  (kopf's name for the event type)
    """kopf filter: the watch event says the object was deleted."""
    return type == "DELETED"


def post(memo: OperatorContext, job: Any, events: Events) -> None:
    """Events tell the job's story in `kubectl describe`; posted by the operator's own client
    (kopf posts only its own warnings and errors, see startup.configure)."""
    ref = job_ref(job)
    for type_, reason, message in events:
        memo.kube.post_event(ref, type_, reason, message)


def write_status(memo: OperatorContext, namespace: str, name: str, change: Change,
                 known: Optional[kopf.Body] = None) -> Optional[dict[str, Any]]:
    """All status writes go through here, resourceVersion-guarded, so a handler working from an
    older snapshot never overwrites what another one wrote. ``known``: the handler's own body,
    tried first (usually still current, which saves a read); a conflict re-reads."""
    written: dict[str, Any] = {}

    def recorded(job: dict[str, Any]) -> Optional[dict[str, Any]]:
        fields = change(job)
        written.clear()
        written.update(fields or {})
        return fields

    job = None
    if known is not None:
        job = {"metadata": dict(known["metadata"]), "status": dict(known.get("status") or {})}
    job = memo.kube.update_rlhfjob_status(namespace, name, recorded, known=job)
    note(memo, namespace, name, None if job is None else {**(job.get("status") or {}), **written})
    return job
