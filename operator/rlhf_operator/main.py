"""The operator entry point: `rlhf operator`, or `kopf run -m rlhf_operator.main`.

Importing this module registers the handlers on kopf's default registry, configured from
the environment (see OperatorConfig.from_env), which is what `kopf run -m` expects; a setting
that does not parse ends the process with one line naming it (exit 2).
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
import sys
from dataclasses import replace
from typing import Optional, Sequence

import kopf
import kubernetes

from .config import ConfigError, OperatorConfig
from .context import OperatorContext
from .handlers import register
from .kube import kube_configuration

try:
    CONFIG = OperatorConfig.from_env()
except ConfigError as exc:
    print(f"rlhf operator: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
METRICS = register(kopf.get_default_registry(), CONFIG)


def run_operator(namespaces: Sequence[str] = (), all_namespaces: bool = False, verbose: bool = False,
                 config: Optional[OperatorConfig] = None, kubeconfig: Optional[str] = None,
                 context: Optional[str] = None) -> int:
    """Run the operator until it is stopped. ``kubeconfig``/``context`` override RLHF_KUBECONFIG/RLHF_KUBE_CONTEXT.

    Returns 1 at once, with one line on stderr, when there is no cluster to connect to."""
    cfg = config or CONFIG
    if kubeconfig or context:
        # The handlers (and kopf's login) read CONFIG: the cluster is chosen there.
        CONFIG.kubeconfig, CONFIG.kube_context = kubeconfig or cfg.kubeconfig, context or cfg.kube_context
        cfg = replace(cfg, kubeconfig=CONFIG.kubeconfig, kube_context=CONFIG.kube_context)
    try:
        kube_configuration(cfg.kubeconfig, cfg.kube_context)
    except (kubernetes.config.ConfigException, OSError) as exc:
        where = cfg.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        tried = "" if cfg.kubeconfig or cfg.kube_context else "not in a pod (no service account), and "
        print(f"rlhf operator: no cluster to connect to: {tried}kubeconfig {where}: {exc}"
              " (pass --kubeconfig FILE, --context NAME)", file=sys.stderr)
        return 1
    watched = list(namespaces) or ([] if all_namespaces else cfg.namespaces)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[cfg.log_format.upper()])
    if not verbose:
        logging.getLogger().setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))
    # What is loaded now (kopf, the kubernetes client's many model classes, imported lazily
    # by attribute) lives as long as the process: keep it out of the garbage collector's passes.
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
            priority=cfg.peering_priority or random.randint(1, 2**31),
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
