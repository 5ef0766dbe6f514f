"""
:class:`KubeEmulator`: the emulated API server in a background thread, with synchronous helpers.

The server runs its own event loop in its own thread, so pytest tests, kopf (in another
thread) and subprocesses (kubectl) can all talk to it at once. The helpers call the
:class:`~.store.ObjectStore` directly, with the same semantics as the HTTP API.
The ``kubernetes`` package reads ``$KUBECONFIG`` once, at import:
:meth:`KubeEmulator.use_as_default` re-points what it froze.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import kmock
import yaml

from .common import Obj
from .errors import ApiError
from .faults import FaultInjector
from .handler import EmulatorHandler, EmulatorServer
from .resources import BUILTIN_RESOURCES, CRD_RESOURCE, CUSTOM_RESOURCES, DEFAULT_NAMESPACES, ApiResource
from .store import ObjectStore

logger = logging.getLogger(__name__)

T = TypeVar('T')

KUBECTL = '/usr/bin/kubectl'


def wait_for(
        predicate: Callable[[], T],
        timeout: float = 10.0,
        interval: float = 0.02,
        message: str | Callable[[], str] | None = None,
) -> T:
    """
    Poll ``predicate()`` until it returns a truthy value; return that value.

    Exceptions raised by the predicate count as "not yet" (so predicates may
    use ``assert`` or index into dicts that are not there yet); the last one
    is reported if the timeout is reached, which raises :class:`TimeoutError`.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            last_exc = None
            if last_value:
                return last_value
        except Exception as e:  # noqa: BLE001 -- any failure means "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            text = text or f"Condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)!r}"
            if last_exc is not None:
                raise TimeoutError(f"{text}; last error: {last_exc!r}") from last_exc
            raise TimeoutError(f"{text}; last value: {last_value!r}")
        time.sleep(interval)


class KubeEmulator:
    """
    An emulated Kubernetes API server on ``http://127.0.0.1:<port>``, in its own thread.

    Use as a context manager (or ``start()``/``stop()``). All helpers are
    thread-safe and synchronous. The KMock handler is ``.kmock`` (recorded
    requests: ``.kmock.requests`` / iteration; DSL reactions for fault injection).
    """

    def __init__(
            self,
            *,
            host: str = '127.0.0.1',
            port: int | None = None,
            resources: Iterable[ApiResource] = (),
            custom_resources: Iterable[ApiResource] = CUSTOM_RESOURCES,
            namespaces: Iterable[str] = DEFAULT_NAMESPACES,
            strict_namespaces: bool = True,
            auto_gc: bool = False,
            record_requests: bool = True,
            event_retention: int = 20_000,
    ) -> None:
        self.store = ObjectStore(strict_namespaces=strict_namespaces, event_retention=event_retention,
                                 auto_gc=auto_gc)
        self._host = host
        self._port = port
        self._record_requests = record_requests
        for res in BUILTIN_RESOURCES:
            self.store.register(res)
        for res in (*custom_resources, *resources):
            self.store.upsert_crd(res) if res.group and res.key != CRD_RESOURCE.key else self.store.register(res)
        for ns in namespaces:
            self.create_namespace(ns)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._url: str | None = None
        self._workdir: str | None = None
        self.kmock: EmulatorHandler | None = None
        self.faults = FaultInjector()  # fault injection: kube.faults.add('status', 'POST', r'/configmaps$', code=500)

    # --- lifecycle ---

    def __enter__(self) -> 'KubeEmulator':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> 'KubeEmulator':
        if self._thread is not None:
            raise RuntimeError('The emulator is already started.')
        self._workdir = tempfile.mkdtemp(prefix='kube-emulator-')
        self._thread = threading.Thread(target=self._thread_main, name='kube-emulator', daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError('The Kubernetes emulator did not start in time.')
        if self._startup_error is not None:
            raise RuntimeError('The Kubernetes emulator failed to start.') from self._startup_error
        self._write_kubeconfig()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass
        thread.join(timeout)
        if thread.is_alive():
            logger.warning('The Kubernetes emulator thread did not stop in %s seconds.', timeout)
        self._thread = None
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as e:  # noqa: BLE001
            self._startup_error = self._startup_error or e
            self._ready.set()

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        handler = EmulatorHandler(store=self.store, record_requests=self._record_requests, faults=self.faults)
        self.kmock = handler
        try:
            async with handler, EmulatorServer(handler, host=self._host, port=self._port) as server:
                self._url = str(server.url).rstrip('/')
                self.store.attach_loop(self._loop)
                self._ready.set()
                await self._stop_event.wait()
                self.store.close()  # ends the watch-streams; then the server stops
                for _ in range(200):
                    if self.store.watch_count <= 0:
                        break
                    await asyncio.sleep(0.01)
        except BaseException as e:
            if not self._ready.is_set():
                self._startup_error = e
                self._ready.set()
            raise

    # --- connectivity ---

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError('The emulator is not started.')
        return self._url

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            raise RuntimeError('The emulator is not started.')
        return self._workdir

    @property
    def kubeconfig_path(self) -> str:
        return os.path.join(self.workdir, 'kubeconfig')

    @property
    def kubectl_cache_dir(self) -> str:
        return os.path.join(self.workdir, 'kubectl-cache')

    def _write_kubeconfig(self) -> None:
        config = {
            'apiVersion': 'v1', 'kind': 'Config', 'preferences': {},
            'clusters': [{'name': 'emulator', 'cluster': {'server': self.url}}],
            'users': [{'name': 'emulator', 'user': {}}],
            'contexts': [{'name': 'emulator', 'context': {'cluster': 'emulator', 'user': 'emulator',
                                                            'namespace': 'default'}}],
            'current-context': 'emulator',
        }
        with open(self.kubeconfig_path, 'w') as f:
            yaml.safe_dump(config, f)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for subprocesses (kubectl, CLIs) pointing to this emulator."""
        env = dict(os.environ if base is None else base)
        env['KUBECONFIG'] = self.kubeconfig_path
        return env

    def client_configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this emulator (no global state touched)."""
        import kubernetes.client
        config = kubernetes.client.Configuration()
        config.host = self.url
        config.verify_ssl = False
        return config

    def api_client(self) -> Any:
        """A fresh ``kubernetes.client.ApiClient`` talking to this emulator."""
        import kubernetes.client
        return kubernetes.client.ApiClient(self.client_configuration())

    def configure_kubernetes_client(self) -> None:
        """Make this emulator the default for ``kubernetes.client`` APIs created without an ApiClient."""
        import kubernetes.client
        kubernetes.client.Configuration.set_default(self.client_configuration())

    @contextlib.contextmanager
    def use_as_default(self) -> Iterator['KubeEmulator']:
        """
        Point the process-wide defaults at this emulator for the duration:
        ``$KUBECONFIG``, ``kubernetes.config``'s default kubeconfig location
        (frozen at import, so ``load_kube_config()`` would miss ``$KUBECONFIG``),
        and ``kubernetes.client.Configuration``'s default (``CoreV1Api()`` etc.).
        Everything is restored on exit.
        """
        import kubernetes.client
        import kubernetes.config.kube_config as kube_config
        saved_env = os.environ.get('KUBECONFIG')
        saved_location = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
        saved_default = kubernetes.client.Configuration.get_default_copy()
        os.environ['KUBECONFIG'] = self.kubeconfig_path
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = self.kubeconfig_path
        kubernetes.client.Configuration.set_default(self.client_configuration())
        try:
            yield self
        finally:
            if saved_env is None:
                os.environ.pop('KUBECONFIG', None)
            else:
                os.environ['KUBECONFIG'] = saved_env
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_location
            kubernetes.client.Configuration.set_default(saved_default)

    def connection_info(self, default_namespace: str | None = 'default') -> Any:
        """A ``kopf.ConnectionInfo`` for this emulator (e.g. to return from ``@kopf.on.login``)."""
        import kopf
        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace=default_namespace,
                                   priority=1000)

    def kubectl(
            self,
            *args: str,
            input: str | bytes | None = None,
            check: bool = True,
            timeout: float = 30.0,
            namespace: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this emulator (own kubeconfig & cache dir). Text output."""
        cmd = [KUBECTL, f'--kubeconfig={self.kubeconfig_path}', f'--cache-dir={self.kubectl_cache_dir}']
        if namespace is not None:
            cmd.append(f'--namespace={namespace}')
        cmd.extend(args)
        text_input = input.decode() if isinstance(input, bytes) else input
        proc = subprocess.run(cmd, input=text_input, capture_output=True, text=True, timeout=timeout,
                              env=self.env())
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    # --- state helpers (thread-safe; the same semantics as via HTTP) ---

    def register_resource(
            self,
            group: str,
            version: str,
            plural: str,
            kind: str,
            *,
            namespaced: bool = True,
            status: bool = True,
            singular: str = '',
            short_names: Sequence[str] = (),
            categories: Sequence[str] = (),
    ) -> ApiResource:
        """Serve a resource. Custom groups also get a CRD object (so running operators rescan)."""
        res = ApiResource(group=group, version=version, plural=plural, kind=kind, namespaced=namespaced,
                          status=status, singular=singular or kind.lower(), short_names=tuple(short_names),
                          categories=tuple(categories))
        if group and res.key != CRD_RESOURCE.key:
            self.store.upsert_crd(res)
        else:
            self.store.register(res)
        return res

    def resource(self, spec: str | ApiResource) -> ApiResource:
        return self.store.find(spec)

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        """Create a namespace (idempotent: returns the existing one if present)."""
        res = self.store.find('v1/namespaces')
        body: Obj = {'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': name}}
        if labels:
            body['metadata']['labels'] = dict(labels)
        try:
            return self.store.create(res, body)
        except ApiError as e:
            if e.code != 409:
                raise
            return self.store.get(res, None, name)

    def create(self, obj: Obj, namespace: str | None = None) -> Obj:
        """Create an object; the resource is found by its ``apiVersion`` & ``kind``."""
        res = self.store.find_kind(obj['apiVersion'], obj['kind'])
        return self.store.create(res, obj, namespace or (obj.get('metadata') or {}).get('namespace'))

    def get(self, resource: str | ApiResource, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object (a copy), or ``None`` if absent."""
        try:
            return self.store.get(self.store.find(resource), namespace, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def list(self, resource: str | ApiResource, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None) -> list[Obj]:
        items, _ = self.store.list(self.store.find(resource), namespace,
                                   label_selector=label_selector, field_selector=field_selector)
        return items

    def patch(self, resource: str | ApiResource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = 'merge', subresource: str | None = None) -> Obj:
        return self.store.patch(self.store.find(resource), namespace, name, patch, patch_type,
                                subresource=subresource)

    def patch_status(self, resource: str | ApiResource, name: str, status: Obj,
                     namespace: str | None = None) -> Obj:
        """Merge-patch the status (via the status subresource where the resource has one)."""
        res = self.store.find(resource)
        return self.store.patch(res, namespace, name, {'status': status}, 'merge',
                                subresource='status' if res.status else None)

    def delete(self, resource: str | ApiResource, name: str, namespace: str | None = None) -> bool:
        """Delete (or mark for deletion if finalizers exist). Returns whether it is gone now."""
        _, gone = self.store.delete(self.store.find(resource), namespace, name)
        return gone

    def events(
            self,
            namespace: str | None = None,
            *,
            involved_name: str | None = None,
            involved_kind: str | None = None,
            involved_uid: str | None = None,
            reason: str | None = None,
            type: str | None = None,
    ) -> list[Obj]:
        """Stored ``v1/events`` (as posted by kopf or others), oldest first, filtered."""
        items = self.list('v1/events', namespace)
        result = []
        for ev in items:
            inv = ev.get('involvedObject') or {}
            if involved_name is not None and inv.get('name') != involved_name:
                continue
            if involved_kind is not None and inv.get('kind') != involved_kind:
                continue
            if involved_uid is not None and inv.get('uid') != involved_uid:
                continue
            if reason is not None and ev.get('reason') != reason:
                continue
            if type is not None and ev.get('type') != type:
                continue
            result.append(ev)
        result.sort(key=lambda e: int(e['metadata']['resourceVersion']))
        return result

    def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """Delete objects whose ``ownerReferences`` all point to absent uids (cascading)."""
        return self.store.collect_garbage()

    def watch_count(self, resource: str | ApiResource | None = None) -> int:
        """Live watch-streams: all, or of one resource."""
        if resource is None:
            return self.store.watch_count
        return self.store.watchers_of(self.store.find(resource))

    @property
    def requests(self) -> list[kmock.Request]:
        """Requests recorded by KMock (if ``record_requests``), oldest first."""
        return list(self.kmock._requests) if self.kmock is not None else []

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
                 message: str | Callable[[], str] | None = None) -> T:
        return wait_for(predicate, timeout=timeout, interval=interval, message=message)
