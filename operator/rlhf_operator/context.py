"""What the handlers share, in one object: kopf's memo.

kopf hands every handler a ``memo`` (its in-memory container, a ``kopf.Memo``): the operator's
own to startup and cleanup handlers, and to each resource's handlers a copy made when the
resource is first seen. OperatorContext is that memo, typed: one per running operator.

How it reaches kopf:

- ``rlhf operator`` (main.run_operator) and the tests' KopfRunner pass it: ``memo=context``.
  Its ``__copy__`` returns itself, so every resource sees this one object (kopf's documented
  way for a custom memo), and no per-resource copy is made.
- ``kopf run -m rlhf_operator`` accepts no memo and makes a plain ``kopf.Memo``. The startup
  handler ``configure``, which ``register()`` gave a context as its ``param``, copies its entries
  into that memo before any resource is watched; kopf's per-resource copies are shallow, so they
  share the same config, counters, active-jobs table and client.

Either way handlers read the same names (``memo.cfg``, ``memo.kube``, ...), as attributes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

import kopf

from .config import OperatorConfig
from .metrics import Metrics
from .render import RenderOptions

if TYPE_CHECKING:
    from aiohttp import web

    from .kube import Kube


class OperatorContext(kopf.Memo):
    """The operator's state, as kopf's memo (a dict whose keys read as attributes)."""

    cfg: OperatorConfig
    metrics: Metrics
    options: RenderOptions
    # Non-terminal jobs → their status as this operator last wrote or saw it. The background
    # loop polls progress from it; kept up to date at the write points (writes.note), so no
    # watch handler has to look at every RLHFJob event.
    active: dict[tuple[str, str], dict[str, Any]]
    kube: Kube  # set by the startup handler `configure`, before the first job arrives
    health: Optional[web.AppRunner]  # the /healthz and /metrics server, while it runs
    background: Optional[asyncio.Task]  # the progress and resync loop, while it runs

    def __init__(self, cfg: OperatorConfig, metrics: Optional[Metrics] = None) -> None:
        super().__init__(
            cfg=cfg,
            metrics=metrics or Metrics(),
            options=RenderOptions(default_image=cfg.worker_image, progress_linger_seconds=cfg.progress_linger_seconds,
                                  operator_namespace=cfg.operator_namespace, kuberay_namespace=cfg.kuberay_namespace),
            active={},
        )

    def __copy__(self) -> "OperatorContext":
        return self  # one context for the operator and every resource
