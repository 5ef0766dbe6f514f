"""Operator start and stop: kopf's login and settings, the API client, the health server.

    login        kopf logs in: the same kubeconfig/context as the operator's client, and its User-Agent
    configure    operator started: kopf's storage and posting settings, the client, /healthz and /metrics
    stop_health  operator stopping: close the health server
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import kopf
import kubernetes
from rlhf_api.names import KIND

from .context import OperatorContext
from .health import start_health_server
from .kube import USER_AGENT, Kube, api_client, kube_configuration


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


class _Identified(kopf.ConnectionInfo):
    """kopf's credentials, and the operator's name on every request kopf itself sends (watches,
    its status patches, its Events): kopf names itself only when the headers it is given do not."""

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), "User-Agent": USER_AGENT}


def connection_info(configuration: kubernetes.client.Configuration, trust_env: bool = False) -> kopf.ConnectionInfo:
    """kopf's credentials from the kubernetes client's configuration (kopf.login_via_client's reading)."""
    # The token is behind the client's api-key lookup, which also runs its refresh hooks.
    header: Optional[str] = (configuration.get_api_key_with_prefix("BearerToken")
                             or configuration.get_api_key_with_prefix("authorization"))
    scheme, _, token = (header or "").rpartition(" ")
    return _Identified(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        username=configuration.username or None, password=configuration.password or None,
        scheme=scheme or None, token=token or None, certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file, trust_env=trust_env, priority=100)


def login(param: OperatorContext, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf handler: log kopf in where the operator's own client goes (RLHF_KUBECONFIG, RLHF_KUBE_CONTEXT)."""
    cfg = param.cfg
    try:
        configuration = kube_configuration(cfg.kubeconfig, cfg.kube_context)
    except kubernetes.config.ConfigException as exc:
        raise kopf.LoginError(f"no cluster to connect to: {exc}") from exc
    return connection_info(configuration, settings.networking.trust_env)


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
    try:
        memo.kube = Kube(api_client(cfg.kubeconfig, cfg.kube_context, on_error=memo.metrics.api_error))
    except kubernetes.config.ConfigException as exc:  # retrying would not find one either
        raise kopf.PermanentError(f"no cluster to connect to: {exc}") from exc
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
