"""The code check before the RayJob: run the job's code once in a CPU-only pod, then go on or fail.

    check_before_rayjob  launch, once the snapshot ConfigMap exists: returns when the code passed
                         (or needs no check); raises kopf.TemporaryError while the pod runs and
                         CodeCheckFailed when the code failed

The pod and its verdict are rendered and read purely (render_codecheck), the status fields
decided purely (status); this module creates, reads and deletes the pod and writes the status
through write_status. The pod is owned by the RLHFJob and deleted once its verdict is read.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Optional

import kopf
from kubernetes.client.rest import ApiException
from rlhf_api.jobstatus import CODE_CHECK_PASSED
from rlhf_api.spec import RLHFJob
from rlhf_api.workerconfig import CONFIG_FILE

from . import status as st
from .context import OperatorContext
from .kube import NotOwned, Refused, Transient, answer_of, is_transient
from .render import Snapshot
from .render_codecheck import codecheck_pod, verdict, wanted
from .writes import post, write_status

log = logging.getLogger(__name__)

POLL_SECONDS = 3.0          # how often launch looks at a running check pod again
WAIT_SECONDS = 900.0        # a pod not finished this long after its creation fails the check


class CodeCheckFailed(Exception):
    """The code failed its check; the message quotes the error (launch ends the job with it)."""


def _create_or_adopt(memo: OperatorContext, pod: dict[str, Any], uid: str) -> None:
    namespace = pod["metadata"]["namespace"]
    try:
        memo.kube.core.create_namespaced_pod(namespace, pod, _preload_content=False).release_conn()
        return
    except ApiException as exc:
        if exc.status != 409:
            if is_transient(exc):
                raise
            raise Refused(pod, answer_of(exc)) from exc
        if answer_of(exc).reason == "Conflict":
            raise
    existing = _read(memo, namespace, pod["metadata"]["name"])
    if existing is None:
        raise Transient(f"Pod {pod['metadata']['name']} was deleted while being adopted")
    if not any(ref.get("uid") == uid for ref in existing["metadata"].get("ownerReferences") or []):
        raise NotOwned(f"Pod {pod['metadata']['name']!r} already exists and is not owned by this RLHFJob;"
                       " delete it or rename the RLHFJob")


def _read(memo: OperatorContext, namespace: str, name: str) -> Optional[dict[str, Any]]:
    try:
        return json.loads(memo.kube.core.read_namespaced_pod(name, namespace, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _delete(memo: OperatorContext, pod: dict[str, Any]) -> None:
    try:
        memo.kube.core.delete_namespaced_pod(pod["metadata"]["name"], pod["metadata"]["namespace"],
                                             grace_period_seconds=0, _preload_content=False).release_conn()
    except ApiException as exc:
        if exc.status != 404:
            log.warning("could not delete code-check pod %s: %s", pod["metadata"]["name"], exc)


def _snapshot(config_map: dict[str, Any]) -> Snapshot:
    return Snapshot(config_map["metadata"]["name"], tuple(sorted(k for k in config_map["data"] if k != CONFIG_FILE)))


def check_before_rayjob(memo: OperatorContext, body: kopf.Body, job: RLHFJob, config_map: dict[str, Any],
                        digest: Optional[str], current: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Run (or look at) the job's code check; the job's status after a pass (None: nothing written)."""
    if not memo.cfg.preflight_pods or not wanted(job.spec) or st.code_check_passed(current) \
            or current.get("rayJobName"):  # launched already (before this check existed, or it was off)
        return None
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    pod = codecheck_pod(job, _snapshot(config_map), digest, memo.options)
    _create_or_adopt(memo, pod, meta["uid"])
    live = _read(memo, namespace, pod["metadata"]["name"]) or pod
    seen = verdict(live, datetime.now(timezone.utc), WAIT_SECONDS)
    if seen.state == "running":
        write_status(memo, namespace, name,
                     lambda fresh: st.checking_code(fresh.get("status") or {}, pod["metadata"]["name"], seen.message,
                                                    generation), body)
        raise kopf.TemporaryError(f"code check running: {seen.message}", delay=POLL_SECONDS)
    _delete(memo, pod)
    if seen.state == "failed":
        raise CodeCheckFailed(seen.message)
    after: dict[str, Any] = {}

    def passed(fresh_job: dict[str, Any]) -> dict[str, Any]:
        fresh = fresh_job.get("status") or {}
        fields = st.code_check_passed_status(fresh, seen.message, generation)
        after.clear()
        after.update({**fresh, **fields})
        return fields
    write_status(memo, namespace, name, passed, body)
    post(memo, body, [("Normal", CODE_CHECK_PASSED, seen.message)])
    return after or None  # launch's own status patch must build on this, not on its older copy


def fail(memo: OperatorContext, body: kopf.Body, error: str) -> str:
    """End the job as RewardCheckFailed (launch has removed what it created); the message written."""
    meta = body["metadata"]
    written: list[str] = []

    def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
        fresh = job.get("status") or {}
        if fresh.get("phase") in (st.Phase.Succeeded.value, st.Phase.Failed.value):
            return None
        fields = st.code_check_failed_status(fresh, error, meta.get("generation"))
        written[:] = [fields["message"]]
        return fields
    write_status(memo, meta["namespace"], meta["name"], change, body)
    message = written[0] if written else error
    post(memo, body, [("Warning", st.REWARD_CHECK_FAILED, message)])
    return message
