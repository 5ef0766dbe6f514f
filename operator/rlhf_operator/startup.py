"""Operator start and stop: kopf's settings, the API client, the health server.

    configure    operator started: kopf's storage and posting settings, the client, /healthz and /metrics
    stop_health  operator stopping: close the health server
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from rlhf_api.names import KIND

from .context import OperatorContext
from .health import start_health_server
from .kube import Kube, api_client


class _RLHFJobDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's diff-base in status, built for RLHFJobs only, and without copying their status.

    On every event of every watched kind, kopf deep-copies the whole object (twice) to find
    what changed since the last handled state, and then drops the status from the copy. Only
    RLHFJobs have change handlers here; RayJobs have an event handler alone, so their copy is
    never compared. Copying the large RayJob bodies was about a tenth of the operator's CPU
    with hundreds of jobs.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") not in (KIND, None):  # unknown kind: build it, as kopf would
            return kopf.BodyEssence()
        if not any(path[:1] == ("status",) for path in extra_fields or ()):
            # No handler watches a status field: leave the status out of the copy.
            body = {key: value for key, value in body.items() if key != "status"}
        return super().build(body=body, extra_fields=extra_fields)


async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, memo: OperatorContext,
                    param: OperatorContext, **_: Any) -> None:
    if not isinstance(memo, OperatorContext):
        # `kopf run` takes no memo from outside and made a plain kopf.Memo: give it the context
        # register() made (this handler's param). No resource is watched yet, so every
        # per-resource copy kopf makes from now on carries it (see context.py).
        memo.update(param)
    cfg = memo.cfg
    # Bookkeeping goes to status only: the operator never writes spec or annotations,
    # so GitOps tools see no drift.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = _RLHFJobDiffBase(field="status.kopf.diffbase")
    settings.persistence.finalizer = "rlhf.dev/kopf-finalizer"
    # kopf posts its own warnings and errors (a handler failing, retrying) as Events; the
    # job's story (created, provisioning, running, ...) is posted by writes.post.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = cfg.max_workers
    if cfg.webhook_cert_dir:
        settings.admission.server = kopf.WebhookServer(
            addr="0.0.0.0", port=cfg.webhook_port,
            certfile=os.path.join(cfg.webhook_cert_dir, "tls.crt"),
            pkeyfile=os.path.join(cfg.webhook_cert_dir, "tls.key"),
        )
        settings.admission.managed = None  # the Helm chart owns the webhook configuration
    # Connect (and import the client's API modules) before the first job arrives.
    memo.kube = Kube(api_client(cfg.kubeconfig))
    if cfg.health_port:
        try:
            memo.health = await start_health_server(cfg.health_port, memo.metrics)
        except OSError as exc:
            # Jobs matter more than probes: run without /healthz and /metrics rather than not at all.
            logger.error("/healthz and /metrics are not served: port %s: %s (set RLHF_HEALTH_PORT to a free"
                         " port, or 0 to turn them off)", cfg.health_port, exc)
    logger.info("rlhf-operator started: namespaces=%s worker image=%s", cfg.namespaces or "all", cfg.worker_image)


async def stop_health(memo: OperatorContext, **_: Any) -> None:
    runner = memo.pop("health", None)
    if runner is not None:
        await runner.cleanup()
