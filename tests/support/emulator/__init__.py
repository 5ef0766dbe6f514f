"""
A Kubernetes API server emulator for integration tests, built on KMock.

KMock (``kmock==0.8``) provides the HTTP foundation: :class:`kmock.Server`
(an aiohttp server on a free local port), :class:`kmock.RawHandler` (request
parsing into :class:`kmock.Request`, request recording for assertions, and the
``<<`` DSL for user-defined reactions). Stock ``kmock.KubernetesEmulator``
is not enough for the real kopf runtime, the ``kubernetes`` client and
``kubectl`` (no uid/resourceVersion/generation, no separated status
subresource, lossy watches ignoring ``?resourceVersion=``, 500s instead of
404/409/422, broken ``/api/v1/namespaces``, wrong core discovery, O(n) scans
per request). This package keeps KMock's server and handler and replaces the
API semantics with :class:`ObjectStore`:

* objects get ``uid``, ``resourceVersion`` (one global counter, bumped on
  every write), ``creationTimestamp``, ``generation`` (bumped on changes
  outside ``metadata``/``status``), ``generateName`` support;
* no-op writes do not bump anything and emit no watch events;
* the ``status`` subresource is separated for resources that declare it;
* merge-, JSON- (RFC 6902, with ``test``), strategic-merge- (approximated)
  and apply-patches (treated as merge patches);
* finalizers and ``deletionTimestamp``; errors as ``Status`` objects with
  the same codes and reasons as a real apiserver (404 NotFound,
  409 AlreadyExists/Conflict, 422 Invalid, 410 Expired, ...);
* watches with proper resourceVersion semantics, fed from a per-resource
  event log (no lost events, O(watchers) fan-out per write), label and field
  selectors, ``sendInitialEvents`` with the initial-events-end bookmark;
* discovery for core ``v1``, several API groups and any registered resource;
  CRDs created via the API register their resources (and vice versa);
  a schema-less OpenAPI v3 stub so that kubectl's default validation passes
  (``/openapi/v2`` is 404: kubectl then uses merge patches for custom resources);
* kubectl's server-side printing (``Table``), list pagination (``limit``/``continue``),
  ``dryRun=All``;
* every response carries ``Connection: close`` (no keep-alive races).

There is no garbage collector: ``ownerReferences`` are stored, but deleting
an owner deletes nothing else unless :meth:`KubeEmulator.collect_garbage` is
called (or ``auto_gc=True`` is passed).

Protobuf is not spoken (415): ``kubectl create configmap ...`` fails; use
``kubectl create ... --dry-run=client -o yaml | kubectl apply -f -``.

Modules, each importing only those above it:

* :mod:`.common` — the object type, JSON on the wire, timestamps;
* :mod:`.resources` — :class:`ApiResource` and the resources served out of the box;
* :mod:`.errors` — :class:`ApiError`, answered as a ``Status``;
* :mod:`.faults` — :class:`FaultInjector`: seeded rules that fail chosen requests (status codes,
  connection resets before or after the write, delays); ``kube.faults``;
* :mod:`.patches` — merge, JSON and strategic-merge patches (pure);
* :mod:`.selectors` — label and field selectors (pure);
* :mod:`.watchlog` — the per-resource event log that watches read;
* :mod:`.crds` — CRD objects and the resources they serve;
* :mod:`.registry`, :mod:`.store` — :class:`ObjectStore`, the cluster's state and its write path;
* :mod:`.routes`, :mod:`.discovery`, :mod:`.handler` — the HTTP layer on KMock;
* :mod:`.facade` — :class:`KubeEmulator`, the server in a thread, and :func:`wait_for`.

Usage (sync, e.g. in pytest; the server runs in its own thread)::

    with KubeEmulator() as kube:
        kube.create_namespace('ns1')
        client = kube.api_client()          # a kubernetes.client.ApiClient
        kube.kubectl('get', 'configmaps', '-n', 'ns1')
        wait_for(lambda: kube.get('configmaps', 'x', namespace='ns1'))
"""
from .errors import ApiError
from .faults import FaultInjector, FaultRule
from .facade import KUBECTL, KubeEmulator, wait_for
from .handler import EmulatorHandler
from .patches import apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from .resources import BUILTIN_RESOURCES, CRD_RESOURCE, CUSTOM_RESOURCES, DEFAULT_NAMESPACES, ApiResource
from .selectors import parse_field_selector, parse_label_selector
from .store import ObjectStore

__all__ = [
    'ApiError',
    'ApiResource',
    'BUILTIN_RESOURCES',
    'CRD_RESOURCE',
    'CUSTOM_RESOURCES',
    'DEFAULT_NAMESPACES',
    'EmulatorHandler',
    'FaultInjector',
    'FaultRule',
    'KUBECTL',
    'KubeEmulator',
    'ObjectStore',
    'apply_json_patch',
    'apply_merge_patch',
    'apply_strategic_merge_patch',
    'parse_field_selector',
    'parse_label_selector',
    'wait_for',
]
