"""
Run the real kopf operator in its own thread against a :class:`KubeEmulator`.

Usage::

    with KubeEmulator() as kube, KopfRunner(kube, 'support.sample_operator',
                                            namespaces=['ns1']) as runner:
        ...  # create objects, wait_for(...) their effects
    assert runner.stop_duration < 5

The operator gets a pre-populated credentials vault pointing to the emulator
(no login handlers are run; ``$KUBECONFIG`` is irrelevant for kopf itself),
:func:`fast_settings` tuned for tests, and a ``threading.Event`` stop flag —
stopping sets the flag and joins the thread. The operator's task is never
cancelled (kopf would arm a delayed SIGKILL for that).

Operator modules are imported into a fresh :class:`kopf.OperatorRegistry`
(the kopf default registry is swapped for the time of the import), so
several operator modules in one test process do not mix their handlers.
The registry of a module is cached for the process. If the module was
already imported normally, it (and its submodules) are reloaded once to
re-register the handlers into the isolated registry.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import kopf
from kopf._cogs.structs.credentials import Vault  # kopf==1.45.2; the `vault=` kwarg of kopf.operator()
from kopf._cogs.structs.references import Insights  # kopf==1.45.2; the `insights=` kwarg

from .emulator import KubeEmulator

__all__ = ['KopfRunner', 'fast_settings', 'load_operator_registry']

logger = logging.getLogger(__name__)

_REGISTRIES: dict[str, kopf.OperatorRegistry] = {}
_REGISTRIES_LOCK = threading.Lock()


def load_operator_registry(module: str) -> kopf.OperatorRegistry:
    """
    The registry with the handlers of an operator module (a dotted name or a ``.py`` path).

    Dotted modules are cached: imported once per process into their own registry.
    Files are loaded afresh every time (under a unique module name).
    """
    with _REGISTRIES_LOCK:
        is_file = module.endswith('.py') or os.sep in module
        if not is_file and module in _REGISTRIES:
            return _REGISTRIES[module]
        registry = kopf.OperatorRegistry()
        previous = kopf.get_default_registry()
        kopf.set_default_registry(registry)
        try:
            if is_file:
                name = f'_kopf_operator_{abs(hash((module, time.monotonic_ns())))}'
                spec = importlib.util.spec_from_file_location(name, module)
                if spec is None or spec.loader is None:
                    raise ImportError(f'Cannot load the operator file {module!r}')
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
            else:
                loaded = sorted(n for n in list(sys.modules) if n == module or n.startswith(module + '.'))
                for name in loaded:  # re-register handlers of already imported modules
                    importlib.reload(sys.modules[name])
                if module not in loaded:
                    importlib.import_module(module)
        finally:
            kopf.set_default_registry(previous)
        if not is_file:
            _REGISTRIES[module] = registry
        return registry


def fast_settings(settings: kopf.OperatorSettings | None = None) -> kopf.OperatorSettings:
    """
    Settings for fast & deterministic tests (on top of the given or default ones).

    Standalone (no peering); events are posted (k8s events for ``kopf.info()``
    and per-object log messages of INFO+); short timeouts & backoffs; handler
    retries after 1 s instead of 60 s (``execution.default_backoff``);
    no SIGKILL safety net (``process.ultimate_exiting_timeout=None``).
    """
    s = settings if settings is not None else kopf.OperatorSettings()
    s.peering.standalone = True
    s.peering.mandatory = False
    s.posting.enabled = True
    s.posting.level = logging.INFO
    s.watching.server_timeout = 30
    s.watching.connect_timeout = 2
    s.watching.reconnect_backoff = 0.05
    s.networking.request_timeout = 15
    s.networking.connect_timeout = 2
    s.networking.error_backoffs = (0.1, 0.2, 0.5, 1)
    s.queueing.error_delays = (0.1, 0.2, 0.5, 1, 2)
    s.queueing.exit_timeout = 1.0
    s.execution.default_backoff = 1.0
    s.background.cancellation_polling = 0.2
    s.background.instant_exit_timeout = 0.1
    s.process.ultimate_exiting_timeout = None
    return s


class KopfRunner:
    """
    The real kopf operator for a module (or registry) in a background thread.

    :param kube: the emulator (or its URL).
    :param module: dotted module name or ``.py`` path with the ``@kopf.on...`` handlers.
    :param registry: an explicit registry instead of ``module``.
    :param namespaces: namespaces to serve; cluster-wide if empty (or ``clusterwide=True``).
    :param settings: base settings; :func:`fast_settings` is applied on top unless ``fast=False``.
    :param configure: a callback to tweak the settings after that.
    :param memo: the operator's memo: a ``kopf.Memo``, or any object with ``__copy__``
        (kopf's custom memo classes); kopf makes an empty ``kopf.Memo`` if None.
    """

    def __init__(
            self,
            kube: KubeEmulator | str,
            module: str | None = None,
            *,
            registry: kopf.OperatorRegistry | None = None,
            namespaces: Collection[str] = (),
            clusterwide: bool | None = None,
            settings: kopf.OperatorSettings | None = None,
            fast: bool = True,
            configure: Callable[[kopf.OperatorSettings], None] | None = None,
            memo: Any = None,
            default_namespace: str = 'default',
            startup_timeout: float = 20.0,
            stop_timeout: float = 15.0,
    ) -> None:
        if (module is None) == (registry is None):
            raise TypeError('Pass exactly one of module= or registry=.')
        self.url = kube if isinstance(kube, str) else kube.url
        self.module = module
        self.registry = registry if registry is not None else load_operator_registry(module or '')
        self.namespaces = list(namespaces)
        self.clusterwide = (not self.namespaces) if clusterwide is None else clusterwide
        self.settings = settings if settings is not None else kopf.OperatorSettings()
        if fast:
            fast_settings(self.settings)
        if configure is not None:
            configure(self.settings)
        self.memo = memo
        self.default_namespace = default_namespace
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.exception: BaseException | None = None
        self.stop_duration: float | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._insights: Insights | None = None

    def __enter__(self) -> 'KopfRunner':
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop(raise_errors=exc is None)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        """Startup handlers are done and the initial resource & namespace discovery is finished."""
        insights = self._insights
        return (self.ready_flag.is_set() and insights is not None and
                insights.ready_resources.is_set() and insights.ready_namespaces.is_set())

    def start(self) -> 'KopfRunner':
        """
        Start the operator and wait until it is :attr:`ready`: the startup handlers are done
        and the initial discovery is over (stopping kopf amid its discovery takes 5 s more).
        """
        if self._thread is not None:
            raise RuntimeError('The operator is already started.')
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f'kopf-{self.module or "registry"}')
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready:
            if self._finished.is_set():
                raise RuntimeError('The operator exited during the startup.') from self.exception
            if time.monotonic() > deadline:
                self.stop(raise_errors=False)
                raise TimeoutError(f'The operator did not become ready in {self.startup_timeout}s.')
            self._finished.wait(0.01)
        return self

    def stop(self, *, raise_errors: bool = True, timeout: float | None = None) -> None:
        """Set the stop flag and join the thread; re-raise the operator's failure if any."""
        thread = self._thread
        if thread is None:
            return
        started = time.monotonic()
        self.stop_flag.set()
        thread.join(timeout if timeout is not None else self.stop_timeout)
        self.stop_duration = time.monotonic() - started
        if thread.is_alive():
            raise TimeoutError(f'The operator did not stop in {self.stop_duration:.1f}s (thread left running).')
        self.settings.execution.executor.shutdown(wait=False)  # the sync handlers' thread pool
        if raise_errors and self.exception is not None:
            raise RuntimeError('The operator failed.') from self.exception

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as e:  # noqa: BLE001
            self.exception = e
            logger.exception('The kopf operator failed.')
        finally:
            self._finished.set()

    async def _amain(self) -> None:
        self._insights = Insights()
        vault = Vault({'kube-emulator': kopf.ConnectionInfo(
            server=self.url, insecure=True, default_namespace=self.default_namespace, priority=1000)})
        await kopf.operator(
            registry=self.registry,
            settings=self.settings,
            clusterwide=self.clusterwide,
            namespaces=self.namespaces,
            standalone=True,
            stop_flag=self.stop_flag,
            ready_flag=self.ready_flag,
            vault=vault,
            insights=self._insights,
            memo=self.memo,
        )
