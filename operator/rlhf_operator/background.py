"""The background loop: progress polls for running jobs, and a periodic resync of every active job.

    start_background  operator started: start the loop
    stop_background   operator stopping: cancel it

Every ``progress_interval`` the loop reads each running job's progress endpoint into its status
(``poll_progress``) and flags a stale heartbeat; every ``resync_interval`` it re-mirrors each
active job's RayJob (``resync``). It works from the active-jobs table in the memo, kept by the
status writes, so no watch handler has to look at every RLHFJob event.

One background loop instead of a kopf timer per job: kopf timers put a finalizer on every
object they serve, and the operator must hold none.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from typing import Any, Optional

from rlhf_api.jobstatus import TERMINAL_PHASES, Phase
from rlhf_api.names import GROUP, PLURAL, VERSION
from rlhf_api.progress import PROGRESS_PORT, ProgressReport

from . import status as st
from .context import OperatorContext
from .mirror import mirror_rayjob, reported
from .writes import Events, note, post, write_status

log = logging.getLogger(__name__)

NUDGE_ANNOTATION = f"{GROUP}/resynced-at"  # written on a job whose kopf event was lost (_nudge_if_stranded)


def _read_report(memo: OperatorContext, url: str) -> Optional[ProgressReport]:
    """The driver's progress report, or None when its endpoint cannot be read (counted as a failure)."""
    memo.metrics.progress_polls_total.inc()
    try:
        with urllib.request.urlopen(url, timeout=memo.cfg.progress_timeout) as response:
            return ProgressReport.from_json(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        memo.metrics.progress_failures_total.inc()
        log.debug("progress endpoint %s unreachable: %s", url, exc)
        return None


def _progress_change(job: dict[str, Any], report: Optional[ProgressReport], stall_seconds: float,
                     events: Events) -> Optional[dict[str, Any]]:
    """The status fields a progress poll changes on a running ``job`` (progress, checkpoint,
    the Stalled and RewardFaults conditions), and the Events to post for them; None when nothing changes."""
    events.clear()
    fresh = job.get("status") or {}
    if fresh.get("phase") != Phase.Running.value:
        return None
    fields: dict[str, Any] = {}
    known = fresh.get("progress") or {}
    heartbeat = known.get("heartbeat")
    if report is not None:
        progress = st.progress_of(report)
        if progress != known:
            fields["progress"] = progress
        heartbeat = report.heartbeat or heartbeat
        if report.last_checkpoint and fresh.get("lastCheckpoint") != report.last_checkpoint.path:
            fields["lastCheckpoint"] = report.last_checkpoint.path
            events.append(("Normal", "Checkpointed",
                           f"step {report.last_checkpoint.step} saved to {report.last_checkpoint.path}"))
        if report.final_model and fresh.get("finalModel") != report.final_model:
            fields["finalModel"] = report.final_model
    # A heartbeat from before this attempt started running says nothing about this attempt.
    running_cond = st.get_condition(fresh.get("conditions") or [], st.RUNNING)
    since = running_cond.get("lastTransitionTime") if running_cond else None
    beat_time, since_time = st.parse_time(heartbeat), st.parse_time(since)
    if since_time and (beat_time is None or beat_time < since_time):
        heartbeat = since
    stall = st.stall_update(fresh, heartbeat, stall_seconds, job["metadata"].get("generation"))
    if stall is not None:
        fields["conditions"], event = stall
        events.append(event)
    faults = st.reward_faults_update({**fresh, **fields}, report, job["metadata"].get("generation"))
    if faults is not None:  # the driver stopped on reward faults; the mirror fails the job with this reason
        fields["conditions"], event = faults
        events.append(event)
    return fields or None


def poll_progress(memo: OperatorContext, namespace: str, name: str, current: dict[str, Any]) -> None:
    """Read a running job's progress endpoint into its status; flag a stale heartbeat."""
    # KubeRay names the cluster {rayjob}-{5 random} and its Service {cluster}-head-svc; before
    # the cluster name is known, the RayJob's own head Service ({rayjob}-head-svc) is tried.
    url = memo.cfg.progress_url.format(cluster=current.get("rayClusterName") or current.get("rayJobName") or name,
                                       namespace=namespace, port=PROGRESS_PORT, job=name)
    report = _read_report(memo, url)
    if report is not None:
        memo.metrics.note_report(namespace, name, report)
    events: Events = []
    job = write_status(memo, namespace, name,
                       lambda job: _progress_change(job, report, memo.cfg.stall_seconds, events))
    if job is not None and events:
        post(memo, job, events)


def _nudge_if_stranded(memo: OperatorContext, namespace: str, name: str) -> None:
    """Touch a job whose launch is not recorded and that has not changed since the last resync.

    kopf handles an object only on its watch events; when kopf's own patch after a handler fails
    (a 409 on its status patch, a reset connection), it logs, throttles, and waits for the next
    event, which may never come: the launch's retry or its outcome is lost with that patch. An
    annotation write is such an event; kopf then resumes the job's handlers (launch adopts what
    exists). A job kopf is working on changes between two resyncs (its retries are recorded) and
    is left alone."""
    job = memo.kube.rlhfjob(namespace, name)
    seen = memo.setdefault("unlaunched_versions", {})
    status = (job or {}).get("status") or {}
    if job is None or status.get("rayJobName") or status.get("phase") in TERMINAL_PHASES:
        seen.pop((namespace, name), None)
        return
    version = job["metadata"].get("resourceVersion")
    if seen.get((namespace, name)) != version:
        seen[(namespace, name)] = version
        return
    log.info("RLHFJob %s/%s is not launched and unchanged since the last resync; nudging kopf", namespace, name)
    memo.kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": {NUDGE_ANNOTATION: st.now_rfc3339()}}})


def resync(memo: OperatorContext, namespace: str, name: str, current: dict[str, Any]) -> None:
    """Level-triggered safety net: re-mirror the RayJob in case an event was missed or its write
    failed; re-trigger a launch whose kopf event was lost."""
    if current.get("phase") in (None, Phase.Pending.value):
        _nudge_if_stranded(memo, namespace, name)
    if not current.get("rayJobName"):
        return
    rayjob = memo.kube.rayjob(namespace, current["rayJobName"])
    if rayjob is not None and reported(rayjob, "MODIFIED"):
        mirror_rayjob(memo, namespace, name, rayjob)
    elif rayjob is None and memo.kube.rlhfjob(namespace, name) is None:
        note(memo, namespace, name, None)  # deleted with its children: stop tracking it


async def background(memo: OperatorContext) -> None:
    """Forever: poll the running jobs every progress_interval, resync all active ones every resync_interval."""
    cfg, active = memo.cfg, memo.active
    limit = asyncio.Semaphore(8)
    last_resync = time.monotonic()

    async def guarded(fn, namespace: str, name: str, status: dict[str, Any]) -> None:
        async with limit:
            try:
                await asyncio.get_running_loop().run_in_executor(None, fn, memo, namespace, name, status)
            except Exception:  # one job's trouble must not stop the loop
                log.exception("background %s of %s/%s failed", fn.__name__, namespace, name)

    while True:
        await asyncio.sleep(cfg.progress_interval)
        tasks = [guarded(poll_progress, ns, name, status) for (ns, name), status in list(active.items())
                 if status.get("phase") == Phase.Running.value]
        if time.monotonic() - last_resync >= cfg.resync_interval:
            last_resync = time.monotonic()
            tasks += [guarded(resync, ns, name, status) for (ns, name), status in list(active.items())]
        await asyncio.gather(*tasks)


async def start_background(memo: OperatorContext, **_: Any) -> None:
    memo.background = asyncio.create_task(background(memo))


async def stop_background(memo: OperatorContext, **_: Any) -> None:
    task = memo.pop("background", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
