"""kopf handlers: one concern each, thin, idempotent; ``register`` puts them on a registry.

    launch            RLHFJob created (or operator resumed): validate, snapshot code, create children
                      (launch.py)
    spec_changed      RLHFJob spec edited: pass suspend/deadlines to the RayJob, refuse immutable edits
                      (launch.py)
    rayjob_changed    RayJob status moved: mirror it into the RLHFJob's phase, conditions and Events
                      (mirror.py)
    validate          admission webhook: the same spec model, before anything is stored; registered
                      only with webhook certificates (admission.py)
    configure         operator started: kopf's settings, the API client, /healthz and /metrics (startup.py)
    stop_health       operator stopping: close the health server (startup.py)
    start_background  operator started: the loop that polls running jobs' progress (poll_progress), flags a
                      stale heartbeat and resyncs every active job from its RayJob (resync) (background.py)
    stop_background   operator stopping: cancel that loop (background.py)

All the decisions live in pure modules (validation, render, status); handlers only read,
call them, and write, every status write through writes.write_status. They share their state
(config, counters, the active-jobs table, the API client) through kopf's memo, an
OperatorContext (context.py).
"""

from __future__ import annotations

from typing import Optional

import kopf
from rlhf_api.names import GROUP, MANAGED_BY, PLURAL, VERSION

from . import admission, background, launch, mirror, startup, writes
from .config import OperatorConfig
from .context import OperatorContext
from .metrics import Metrics

__all__ = ["Metrics", "OperatorConfig", "OperatorContext", "register"]


def _id(name: str) -> str:
    """A handler's id as kopf derived it when the handlers were closures inside register().

    kopf keeps each handler's progress (retries, start time, outcome) in the job's
    status.kopf.progress under the handler's id; jobs launched by an earlier operator carry
    these ids, and a handler whose id changed would start over on them.
    """
    return f"register.<locals>.{name}"


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig, metrics: Optional[Metrics] = None) -> Metrics:
    """Register every handler on ``registry`` for an operator configured by ``cfg``.

    The handlers read their state from the memo kopf hands them: pass an ``OperatorContext(cfg,
    metrics)`` as kopf's ``memo``; under ``kopf run``, which takes none, ``configure`` installs the
    one made here. The order is kopf's order of execution within each kind of handler.
    """
    context = OperatorContext(cfg, metrics)
    rlhfjobs = (GROUP, VERSION, PLURAL)
    on, timed = kopf.on, context.metrics.timed  # every job handler's duration is observed, by handler
    on.login(id="login", param=context, registry=registry)(startup.login)
    on.startup(id=_id("configure"), param=context, registry=registry)(startup.configure)
    on.cleanup(id=_id("stop_health"), registry=registry)(startup.stop_health)
    on.create(*rlhfjobs, id=_id("launch"), registry=registry)(timed("launch", launch.launch))
    on.resume(*rlhfjobs, id=_id("launch"), registry=registry)(timed("launch", launch.launch))
    on.update(*rlhfjobs, field="spec", id=_id("spec_changed"), registry=registry)(
        timed("spec_changed", launch.spec_changed))
    on.event(*rlhfjobs, when=writes.gone, id="forget", registry=registry)(writes.forget)
    on.event("ray.io", "v1", "rayjobs", labels=MANAGED_BY, when=mirror.reported, id=_id("rayjob_changed"),
             registry=registry)(timed("rayjob_changed", mirror.rayjob_changed))
    on.startup(id=_id("start_background"), registry=registry)(background.start_background)
    on.cleanup(id=_id("stop_background"), registry=registry)(background.stop_background)
    if cfg.webhook_cert_dir:  # kopf refuses admission handlers without a server to serve them
        on.validate(*rlhfjobs, id="validate-rlhfjob", registry=registry)(admission.validate)
    return context.metrics
