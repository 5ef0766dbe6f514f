"""The operator entry point: `rlhf operator`, or `kopf run -m rlhf_operator.main`.

Importing this module registers the handlers on kopf's default registry, configured from
the environment (see OperatorConfig.from_env), which is what `kopf run -m` expects.
`run_operator` hands kopf the handlers' shared state as its memo (an OperatorContext);
`kopf run` takes no memo, and the startup handler installs the same state itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
from typing import Optional, Sequence

import kopf

from .config import OperatorConfig
from .context import OperatorContext
from .handlers import register

CONFIG = OperatorConfig.from_env()
METRICS = register(kopf.get_default_registry(), CONFIG)


def run_operator(namespaces: Sequence[str] = (), all_namespaces: bool = False, verbose: bool = False,
                 config: Optional[OperatorConfig] = None) -> int:
    cfg = config or CONFIG
    watched = list(namespaces) or ([] if all_namespaces else cfg.namespaces)
    kopf.configure(verbose=verbose)
    if not verbose:
        logging.getLogger().setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))
    # What is loaded now (kopf, the kubernetes client's many model classes, imported lazily
    # by attribute) lives as long as the process: keep it out of the garbage collector's passes.
    import kubernetes

    kubernetes.client.CoreV1Api, kubernetes.client.CustomObjectsApi  # noqa: B018
    gc.collect()
    gc.freeze()
    # Each job allocates thousands of short-lived dicts (request and watch bodies); collecting
    # every 700 allocations cost ~10% of the operator's CPU with hundreds of jobs.
    gc.set_threshold(10_000, 20, 20)
    with _event_loop() as loop:
        kopf.run(
            loop=loop,
            # The handlers were registered on import, configured by CONFIG: their memo is made
            # from the same settings (``config`` above sets only what kopf itself is told:
            # namespaces, peering, logging).
            memo=OperatorContext(CONFIG, METRICS),
            clusterwide=not watched,
            namespaces=watched,
            standalone=cfg.peering is None,
            peering_name=cfg.peering,
            # Replicas of one Deployment cannot be given distinct priorities, and kopf pauses every
            # peer that ties for the top one: without an explicit priority, pick a random one.
            priority=int(os.environ.get("RLHF_PEERING_PRIORITY") or random.randint(1, 2**31)),
        )
    return 0


@contextlib.contextmanager
def _event_loop():
    """uvloop when it is installed, as `kopf run` picks it; else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        yield None
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner.get_loop()
