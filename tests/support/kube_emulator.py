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
per request). This module keeps KMock's server and handler and replaces the
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

Usage (sync, e.g. in pytest; the server runs in its own thread)::

    with KubeEmulator() as kube:
        kube.create_namespace('ns1')
        client = kube.api_client()          # a kubernetes.client.ApiClient
        kube.kubectl('get', 'configmaps', '-n', 'ns1')
        wait_for(lambda: kube.get('configmaps', 'x', namespace='ns1'))
"""
from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering as _kmock_rendering

__all__ = [
    'ApiError',
    'ApiResource',
    'BUILTIN_RESOURCES',
    'KubeEmulator',
    'ObjectStore',
    'apply_json_patch',
    'apply_merge_patch',
    'apply_strategic_merge_patch',
    'parse_field_selector',
    'parse_label_selector',
    'wait_for',
]

logger = logging.getLogger(__name__)

T = TypeVar('T')
Obj = dict[str, Any]

KUBECTL = '/usr/bin/kubectl'


# ----------------------------------------------------------------------------------------------
# Waiting helper
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Resources (discovery)
# ----------------------------------------------------------------------------------------------

DEFAULT_VERBS = ('create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch')


@dataclasses.dataclass(frozen=True)
class ApiResource:
    """A served resource: what discovery reports and how the store treats it."""
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has the status subresource
    singular: str = ''
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = DEFAULT_VERBS
    generation: bool | None = None  # None: only for non-core groups

    @property
    def api_version(self) -> str:
        return f'{self.group}/{self.version}' if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def qualified(self) -> str:
        """The "group resource" as in the apiserver's messages: ``rlhfjobs.rlhf.dev``."""
        return f'{self.plural}.{self.group}' if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return f'{self.kind}List'

    @property
    def tracks_generation(self) -> bool:
        return self.generation if self.generation is not None else bool(self.group)

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def url(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f'/apis/{self.group}/{self.version}' if self.group else f'/api/{self.version}'
        parts = [base]
        if self.namespaced and namespace is not None:
            parts.append(f'namespaces/{namespace}')
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return '/'.join(parts)

    def discovery(self) -> list[Obj]:
        main: Obj = {
            'name': self.plural,
            'singularName': self.singular or self.kind.lower(),
            'namespaced': self.namespaced,
            'kind': self.kind,
            'verbs': list(self.verbs),
        }
        if self.short_names:
            main['shortNames'] = list(self.short_names)
        if self.categories:
            main['categories'] = list(self.categories)
        result = [main]
        if self.status:
            result.append({
                'name': f'{self.plural}/status',
                'singularName': '',
                'namespaced': self.namespaced,
                'kind': self.kind,
                'verbs': ['get', 'patch', 'update'],
            })
        return result


def _res(api_version: str, plural: str, kind: str, **kwargs: Any) -> ApiResource:
    group, _, version = api_version.rpartition('/')
    return ApiResource(group=group, version=version, plural=plural, kind=kind, **kwargs)


# Resources known out of the box. Custom resources (rlhf.dev, ray.io, kopf.dev) also get CRD objects.
BUILTIN_RESOURCES: tuple[ApiResource, ...] = (
    _res('v1', 'namespaces', 'Namespace', namespaced=False, status=True, short_names=('ns',),
         verbs=('create', 'delete', 'get', 'list', 'patch', 'update', 'watch')),
    _res('v1', 'configmaps', 'ConfigMap', short_names=('cm',)),
    _res('v1', 'secrets', 'Secret'),
    _res('v1', 'services', 'Service', status=True, short_names=('svc',)),
    _res('v1', 'events', 'Event', short_names=('ev',)),
    _res('v1', 'pods', 'Pod', status=True, short_names=('po',), categories=('all',)),
    _res('v1', 'serviceaccounts', 'ServiceAccount', short_names=('sa',)),
    _res('v1', 'persistentvolumeclaims', 'PersistentVolumeClaim', status=True, short_names=('pvc',)),
    _res('v1', 'nodes', 'Node', namespaced=False, status=True, short_names=('no',)),
    _res('apps/v1', 'deployments', 'Deployment', status=True, short_names=('deploy',), categories=('all',)),
    _res('batch/v1', 'jobs', 'Job', status=True, categories=('all',)),
    _res('coordination.k8s.io/v1', 'leases', 'Lease'),
    _res('apiextensions.k8s.io/v1', 'customresourcedefinitions', 'CustomResourceDefinition',
         namespaced=False, status=True, short_names=('crd', 'crds')),
)

CUSTOM_RESOURCES: tuple[ApiResource, ...] = (
    _res('rlhf.dev/v1alpha1', 'rlhfjobs', 'RLHFJob', status=True, singular='rlhfjob'),
    _res('ray.io/v1', 'rayjobs', 'RayJob', status=True, singular='rayjob', categories=('all',)),
    _res('ray.io/v1', 'rayclusters', 'RayCluster', status=True, singular='raycluster', categories=('all',)),
    _res('ray.io/v1', 'rayservices', 'RayService', status=True, singular='rayservice', categories=('all',)),
    _res('kopf.dev/v1', 'clusterkopfpeerings', 'ClusterKopfPeering', namespaced=False),
    _res('kopf.dev/v1', 'kopfpeerings', 'KopfPeering'),
)

CRD_RESOURCE = BUILTIN_RESOURCES[-1]
DEFAULT_NAMESPACES = ('default', 'kube-system', 'kube-public', 'kube-node-lease')


# ----------------------------------------------------------------------------------------------
# Errors (rendered as metav1.Status)
# ----------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An API failure with the same code/reason a real apiserver would answer."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(f'{code} {reason}: {message}')
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        status: Obj = {
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {},
            'status': 'Failure', 'message': self.message, 'reason': self.reason, 'code': self.code,
        }
        if self.details is not None:
            status['details'] = self.details
        return status

    @classmethod
    def not_found(cls, res: ApiResource | None, name: str | None = None) -> 'ApiError':
        if res is None:
            return cls(404, 'NotFound', 'the server could not find the requested resource', {})
        return cls(404, 'NotFound', f'{res.qualified} "{name}" not found',
                   {'name': name, 'group': res.group, 'kind': res.plural})

    @classmethod
    def already_exists(cls, res: ApiResource, name: str) -> 'ApiError':
        return cls(409, 'AlreadyExists', f'{res.qualified} "{name}" already exists',
                   {'name': name, 'group': res.group, 'kind': res.plural})

    @classmethod
    def conflict(cls, res: ApiResource, name: str, why: str = '') -> 'ApiError':
        why = why or 'the object has been modified; please apply your changes to the latest version and try again'
        return cls(409, 'Conflict', f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
                   {'name': name, 'group': res.group, 'kind': res.plural})

    @classmethod
    def invalid(cls, res: ApiResource | None, name: str | None, why: str) -> 'ApiError':
        if res is None:
            return cls(422, 'Invalid', why, {})
        return cls(422, 'Invalid', f'{res.kind} "{name}" is invalid: {why}',
                   {'name': name, 'group': res.group, 'kind': res.kind, 'causes': [{'message': why}]})

    @classmethod
    def bad_request(cls, why: str) -> 'ApiError':
        return cls(400, 'BadRequest', why)

    @classmethod
    def gone(cls, why: str) -> 'ApiError':
        return cls(410, 'Expired', why)


class _JSONPatchError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------

def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. Returns a new value; never mutates the inputs."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# Merge keys of the built-in types (containers/env/volumes by name, ports, mounts, conditions...).
_SMP_MERGE_KEYS = ('name', 'containerPort', 'mountPath', 'devicePath', 'type', 'ip', 'topologyKey')


def _smp_strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _smp_strip(v) for k, v in value.items() if not k.startswith('$')}
    if isinstance(value, list):
        return [_smp_strip(v) for v in value]
    return value


def _smp_merge_key(old: list[Any], new: list[Any]) -> str | None:
    if not new or not all(isinstance(item, dict) for item in [*old, *new]):
        return None
    for key in _SMP_MERGE_KEYS:
        if all(key in item for item in new) and all(key in item for item in old):
            return key
    return None


def _smp_list(old: list[Any], new: list[Any]) -> list[Any]:
    key = _smp_merge_key(old, new)
    if key is None:
        return _smp_strip(new)  # primitives & unknown lists: replaced, as for most non-merge lists
    result = list(old)
    index = {item[key]: i for i, item in enumerate(result)}
    for item in new:
        if item.get('$patch') == 'delete':
            if item[key] in index:
                result[index[item[key]]] = None
            continue
        if item[key] in index:
            result[index[item[key]]] = apply_strategic_merge_patch(result[index[item[key]]], item)
        else:
            index[item[key]] = len(result)
            result.append(_smp_strip(item))
    return [item for item in result if item is not None]


def _smp_reorder(items: list[Any], order: list[Any]) -> list[Any]:
    def ident(item: Any) -> Any:
        if isinstance(item, dict):
            return json.dumps(item, sort_keys=True)
        return json.dumps(item)
    if all(isinstance(o, dict) and len(o) == 1 for o in order) and all(isinstance(i, dict) for i in items):
        key = next(iter(order[0])) if order else None
        positions = {json.dumps(o[key]): n for n, o in enumerate(order) if key in o}
        return sorted(items, key=lambda i: positions.get(json.dumps(i.get(key)), len(positions)))
    positions = {ident(o): n for n, o in enumerate(order)}
    return sorted(items, key=lambda i: positions.get(ident(i), len(positions)))


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """
    An approximation of the strategic merge patch (no schemas are known here).

    Dicts merge as in RFC 7386; ``$patch: replace|delete``, ``$retainKeys``,
    ``$setElementOrder/…`` and ``$deleteFromPrimitiveList/…`` directives are
    honoured or dropped; lists of dicts merge by a conventional merge key
    (``name``, ``containerPort``, ``mountPath``, ``type``, …) if all items
    have it; other lists are replaced.
    """
    if not isinstance(patch, dict):
        return _smp_strip(patch)
    directive = patch.get('$patch')
    if directive == 'replace':
        return _smp_strip(patch)
    if directive == 'delete':
        return None
    result = dict(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    retain: list[str] | None = None
    for key, value in patch.items():
        if key.startswith('$setElementOrder/'):
            orders[key.split('/', 1)[1]] = value
        elif key.startswith('$deleteFromPrimitiveList/'):
            deletions[key.split('/', 1)[1]] = value
        elif key == '$retainKeys':
            retain = list(value or [])
        elif key.startswith('$'):
            continue
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _smp_list(result[key], value)
        else:
            merged = apply_strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [item for item in result[key] if item not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list) and isinstance(order, list):
            result[key] = _smp_reorder(result[key], order)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise _JSONPatchError(f'invalid path: {path!r}')
    if path == '':
        return []
    if not path.startswith('/'):
        raise _JSONPatchError(f'invalid JSON pointer: {path!r}')
    return [part.replace('~1', '/').replace('~0', '~') for part in path[1:].split('/')]


def _index(container: list[Any], token: str, *, for_add: bool = False) -> int:
    if for_add and token == '-':
        return len(container)
    if not re.fullmatch(r'0|[1-9][0-9]*', token):
        raise _JSONPatchError(f'invalid array index: {token!r}')
    idx = int(token)
    if idx > len(container) or (not for_add and idx == len(container)):
        raise _JSONPatchError(f'array index out of range: {idx}')
    return idx


def _resolve(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise _JSONPatchError(f'path not found: /{"/".join(tokens)}')
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token)]
        else:
            raise _JSONPatchError(f'path not found: /{"/".join(tokens)}')
    return node


def apply_json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch. Returns a new document; raises ``ValueError`` on failures."""
    if not isinstance(ops, list):
        raise _JSONPatchError('a JSON patch must be a list of operations')
    doc = copy.deepcopy(doc)

    def add(tokens: list[str], value: Any) -> None:
        nonlocal doc
        if not tokens:
            doc = value
            return
        parent = _resolve(doc, tokens[:-1])
        if isinstance(parent, dict):
            parent[tokens[-1]] = value
        elif isinstance(parent, list):
            parent.insert(_index(parent, tokens[-1], for_add=True), value)
        else:
            raise _JSONPatchError(f'cannot add to a non-container at /{"/".join(tokens)}')

    def remove(tokens: list[str]) -> Any:
        nonlocal doc
        if not tokens:
            raise _JSONPatchError('cannot remove the root')
        parent = _resolve(doc, tokens[:-1])
        if isinstance(parent, dict):
            if tokens[-1] not in parent:
                raise _JSONPatchError(f'path not found: /{"/".join(tokens)}')
            return parent.pop(tokens[-1])
        elif isinstance(parent, list):
            return parent.pop(_index(parent, tokens[-1]))
        raise _JSONPatchError(f'path not found: /{"/".join(tokens)}')

    for op in ops:
        if not isinstance(op, dict) or 'op' not in op or 'path' not in op:
            raise _JSONPatchError(f'invalid operation: {op!r}')
        name, tokens = op['op'], _pointer(op['path'])
        if name in ('add', 'replace', 'test') and 'value' not in op:
            raise _JSONPatchError(f'missing value in: {op!r}')
        if name == 'add':
            add(tokens, copy.deepcopy(op['value']))
        elif name == 'remove':
            remove(tokens)
        elif name == 'replace':
            _resolve(doc, tokens)  # must exist
            if tokens:
                remove(tokens)
            add(tokens, copy.deepcopy(op['value']))
        elif name == 'move':
            value = remove(_pointer(op.get('from')))
            add(tokens, value)
        elif name == 'copy':
            add(tokens, copy.deepcopy(_resolve(doc, _pointer(op.get('from')))))
        elif name == 'test':
            try:
                actual = _resolve(doc, tokens)
            except _JSONPatchError:
                raise _JSONPatchError(f'testing value {op["path"]} failed: path not found') from None
            if actual != op['value']:
                raise _JSONPatchError(f'testing value {op["path"]} failed: test failed')
        else:
            raise _JSONPatchError(f'unknown operation: {name!r}')
    return doc


# ----------------------------------------------------------------------------------------------
# Selectors
# ----------------------------------------------------------------------------------------------

_LABEL_KEY = r'[A-Za-z0-9_./-]+'
_LABEL_VAL = r'[A-Za-z0-9_./-]*'


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ''
    for ch in text:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(selector: str | None) -> Callable[[Mapping[str, str]], bool] | None:
    """Parse a label selector (``a=b,c!=d,e in (f,g),!h,i``) into a predicate on labels."""
    if not selector:
        return None
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_top_level(selector):
        if m := re.fullmatch(rf'({_LABEL_KEY})\s*(==|=|!=)\s*({_LABEL_VAL})', term):
            key, op, val = m.groups()
            if op == '!=':
                checks.append(lambda labels, k=key, v=val: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=val: k in labels and labels[k] == v)
        elif m := re.fullmatch(rf'({_LABEL_KEY})\s+(in|notin)\s*\(([^)]*)\)', term):
            key, op, raw = m.groups()
            values = {v.strip() for v in raw.split(',') if v.strip()}
            if op == 'in':
                checks.append(lambda labels, k=key, vs=values: k in labels and labels[k] in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: k not in labels or labels[k] not in vs)
        elif m := re.fullmatch(rf'!\s*({_LABEL_KEY})', term):
            checks.append(lambda labels, k=m.group(1): k not in labels)
        elif m := re.fullmatch(rf'({_LABEL_KEY})', term):
            checks.append(lambda labels, k=m.group(1): k in labels)
        else:
            raise ApiError.bad_request(f'unable to parse requirement: {term!r}')
    return lambda labels: all(check(labels) for check in checks)


def _dig(obj: Any, path: str) -> str:
    node = obj
    for part in path.split('.'):
        if not isinstance(node, dict) or part not in node:
            return ''
        node = node[part]
    if isinstance(node, bool):
        return 'true' if node else 'false'
    return '' if node is None else str(node)


def parse_field_selector(selector: str | None) -> Callable[[Obj], bool] | None:
    """Parse a field selector (``metadata.name=x,involvedObject.uid!=y``) into a predicate on objects."""
    if not selector:
        return None
    checks: list[Callable[[Obj], bool]] = []
    for term in _split_top_level(selector):
        m = re.fullmatch(r'([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)', term)
        if not m:
            raise ApiError.bad_request(f'invalid field selector: {term!r}')
        path, op, val = m.groups()
        if op == '!=':
            checks.append(lambda obj, p=path, v=val: _dig(obj, p) != v)
        else:
            checks.append(lambda obj, p=path, v=val: _dig(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)


# ----------------------------------------------------------------------------------------------
# The object store
# ----------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')
_GENERATE_CHARS = 'bcdfghjklmnpqrstvwxz2456789'
_SYSTEM_META = ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp',
                'deletionGracePeriodSeconds', 'generation', 'resourceVersion', 'selfLink')


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(',', ':')).encode()


def _with_rv(obj: Obj, rv: int) -> Obj:
    """A shallow copy with a new resourceVersion (stored objects are never mutated in place)."""
    new = dict(obj)
    new['metadata'] = dict(obj.get('metadata') or {}, resourceVersion=str(rv))
    return new


def _sans_volatile(obj: Obj) -> Obj:
    meta = {k: v for k, v in (obj.get('metadata') or {}).items() if k not in ('resourceVersion', 'managedFields')}
    return dict(obj, metadata=meta)


def _content(obj: Obj) -> Obj:
    """The part of an object that bumps the generation: all but metadata & status."""
    return {k: v for k, v in obj.items() if k not in ('metadata', 'status', 'apiVersion', 'kind')}


class _WatchEvent:
    __slots__ = ('rv', 'type', 'obj', 'prev', 'namespace', '_line')

    def __init__(self, rv: int, type: str, obj: Obj, prev: Obj | None) -> None:
        self.rv = rv
        self.type = type
        self.obj = obj
        self.prev = prev
        self.namespace = (obj.get('metadata') or {}).get('namespace')
        self._line: bytes | None = None

    @property
    def line(self) -> bytes:  # encoded once, shared by all watchers
        if self._line is None:
            self._line = _dumps({'type': self.type, 'object': self.obj}) + b'\n'
        return self._line


class _Watcher:
    """A live watch-stream's cursor into a bucket's event log (lives in the emulator loop)."""

    def __init__(self, bucket: '_Bucket', cursor: int, namespace: str | None,
                 labels: Callable[[Mapping[str, str]], bool] | None,
                 fields: Callable[[Obj], bool] | None) -> None:
        self.bucket = bucket
        self.cursor = cursor  # absolute index of the next event to read
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.wakeup = asyncio.Event()

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get('metadata') or {}
        if self.namespace is not None and meta.get('namespace') != self.namespace:
            return False
        if self.labels is not None and not self.labels(meta.get('labels') or {}):
            return False
        if self.fields is not None and not self.fields(obj):
            return False
        return True

    def render(self, event: _WatchEvent) -> bytes | None:
        if self.namespace is not None and event.namespace != self.namespace:
            return None
        if self.labels is None and self.fields is None:
            return event.line
        now, before = self.matches(event.obj), self.matches(event.prev)
        if event.type == 'DELETED':
            return event.line if now else None
        if now and before:
            return event.line
        if now:  # started matching the selector
            return _dumps({'type': 'ADDED', 'object': event.obj}) + b'\n'
        if before:  # stopped matching the selector
            return _dumps({'type': 'DELETED', 'object': event.obj}) + b'\n'
        return None


class _Bucket:
    """All objects of one resource (group+plural), their event log, and their watchers."""

    def __init__(self, retention: int) -> None:
        self.objects: dict[tuple[str | None, str], Obj] = {}
        self.log: list[_WatchEvent] = []
        self.log_rvs: list[int] = []
        self.base = 0  # absolute index of log[0]
        self.compacted_rv = 0  # events with rv <= this are no longer available
        self.retention = retention
        self.watchers: set[_Watcher] = set()

    @property
    def end(self) -> int:
        return self.base + len(self.log)

    def append(self, event: _WatchEvent) -> None:
        self.log.append(event)
        self.log_rvs.append(event.rv)
        if len(self.log) >= 2 * self.retention:  # amortised O(1) compaction
            drop = len(self.log) - self.retention
            self.compacted_rv = self.log_rvs[drop - 1]
            del self.log[:drop]
            del self.log_rvs[:drop]
            self.base += drop

    def position_after(self, rv: int) -> int:
        return self.base + bisect.bisect_right(self.log_rvs, rv)

    def read(self, cursor: int) -> list[_WatchEvent]:
        return self.log[cursor - self.base:]


class ObjectStore:
    """
    The thread-safe in-memory state of the emulated cluster.

    All methods may be called from any thread; every write goes through the
    same code path as the HTTP API (events, resourceVersions, finalizers),
    so tests can seed or change state directly and watchers will see it.
    Objects handed out are deep copies.
    """

    def __init__(
            self,
            *,
            strict_namespaces: bool = True,
            event_retention: int = 20_000,
            auto_gc: bool = False,
    ) -> None:
        self.strict_namespaces = strict_namespaces
        self.event_retention = event_retention
        self.auto_gc = auto_gc
        self.lock = threading.RLock()
        self._rv = 0
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._resources: dict[tuple[str, str, str], ApiResource] = {}  # (group, version, plural)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self.watch_count = 0  # live watch-streams (all resources)

    # --- loop binding (watch notifications) ---

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def close(self) -> None:
        """Terminate all watch-streams (e.g. before the server stops)."""
        with self.lock:
            self._closed = True
            for bucket in self._buckets.values():
                self._notify(bucket)

    @property
    def closed(self) -> bool:
        return self._closed

    def _notify(self, bucket: _Bucket) -> None:
        if not bucket.watchers or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            for watcher in bucket.watchers:
                watcher.wakeup.set()
        else:
            watchers = list(bucket.watchers)
            try:
                self._loop.call_soon_threadsafe(lambda: [w.wakeup.set() for w in watchers])
            except RuntimeError:  # the loop is closed
                pass

    # --- resources ---

    @property
    def resource_version(self) -> int:
        return self._rv

    def register(self, res: ApiResource) -> ApiResource:
        """Serve a resource (discovery + storage), replacing a same-named one. No CRD object."""
        with self.lock:
            self._resources[(res.group, res.version, res.plural)] = res
            self._buckets.setdefault(res.key, _Bucket(self.event_retention))
        return res

    def unregister(self, group: str, version: str, plural: str) -> None:
        with self.lock:
            self._resources.pop((group, version, plural), None)

    def resources(self) -> list[ApiResource]:
        with self.lock:
            return list(self._resources.values())

    def resource(self, group: str, version: str, plural: str) -> ApiResource | None:
        return self._resources.get((group, version, plural))

    def find(self, spec: 'str | ApiResource') -> ApiResource:
        """
        Resolve a resource by any common notation: an :class:`ApiResource`,
        ``configmaps``, ``cm``, ``ConfigMap``, ``rlhfjobs.rlhf.dev``,
        ``rlhf.dev/v1alpha1/rlhfjobs``, ``v1/configmaps``, ``rlhfjobs.v1alpha1.rlhf.dev``.
        """
        if isinstance(spec, ApiResource):
            return spec
        resources = self.resources()
        group: str | None = None
        version: str | None = None
        name = spec
        if '/' in spec:
            head, _, name = spec.rpartition('/')
            if '/' in head:
                group, version = head.split('/', 1)
            elif re.fullmatch(r'v\d+((alpha|beta)\d+)?', head):
                group, version = '', head
            else:
                group = head
        elif '.' in spec:
            name, _, rest = spec.partition('.')
            first, _, tail = rest.partition('.')
            if tail and re.fullmatch(r'v\d+((alpha|beta)\d+)?', first):
                version, group = first, tail
            else:
                group = rest
        candidates = [
            r for r in resources
            if (group is None or r.group == group) and (version is None or r.version == version)
            and name in (r.plural, r.singular, r.kind, r.kind.lower(), *r.short_names)
        ]
        if not candidates:
            raise LookupError(f'Unknown resource: {spec!r}')
        candidates.sort(key=lambda r: (r.group != '', r.group))  # core first, as kubectl does
        return candidates[0]

    def find_kind(self, api_version: str, kind: str) -> ApiResource:
        group, _, version = api_version.rpartition('/')
        for res in self.resources():
            if res.group == group and res.version == version and res.kind == kind:
                return res
        raise LookupError(f'Unknown kind: {api_version} {kind}')

    def _bucket(self, res: ApiResource) -> _Bucket:
        return self._buckets.setdefault(res.key, _Bucket(self.event_retention))

    # --- internals ---

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _commit(self, res: ApiResource, type: str, obj: Obj, prev: Obj | None) -> Obj:
        """Store (or remove on DELETED) a fresh object with a new resourceVersion; log the event."""
        bucket = self._bucket(res)
        rv = self._next_rv()
        obj = _with_rv(obj, rv)
        meta = obj['metadata']
        key = (meta.get('namespace'), meta['name'])
        if type == 'DELETED':
            bucket.objects.pop(key, None)
        else:
            bucket.objects[key] = obj
        bucket.append(_WatchEvent(rv, type, obj, prev))
        self._notify(bucket)
        if res.key == CRD_RESOURCE.key:
            self._sync_crd(obj, deleted=(type == 'DELETED'))
        return obj

    def _check_namespace(self, res: ApiResource, namespace: str | None, name: str | None = None) -> None:
        if not res.namespaced:
            return
        if not namespace:
            raise ApiError.bad_request(f'a namespace is required for namespaced {res.qualified}')
        if self.strict_namespaces:
            ns = self._buckets.get(('', 'namespaces'))
            nsobj = ns.objects.get((None, namespace)) if ns is not None else None
            if nsobj is None:
                raise ApiError(404, 'NotFound', f'namespaces "{namespace}" not found',
                               {'name': namespace, 'kind': 'namespaces'})
            if (nsobj.get('metadata') or {}).get('deletionTimestamp'):
                raise ApiError(403, 'Forbidden',
                               f'{res.plural} "{name}" is forbidden: unable to create new content in namespace'
                               f' {namespace} because it is being terminated')

    def _current(self, res: ApiResource, namespace: str | None, name: str) -> Obj:
        ns = namespace if res.namespaced else None
        obj = self._bucket(res).objects.get((ns, name))
        if obj is None:
            raise ApiError.not_found(res, name)
        return obj

    # --- API operations (the HTTP layer calls these; tests may too) ---

    def create(self, res: ApiResource, body: Any, namespace: str | None = None, *, dry_run: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise ApiError.bad_request('the body of the request was in an unknown format; expected an object')
        obj = copy.deepcopy(body)
        meta = obj.get('metadata')
        if meta is None:
            meta = obj['metadata'] = {}
        if not isinstance(meta, dict):
            raise ApiError.bad_request('metadata must be an object')
        if res.namespaced:
            body_ns = meta.get('namespace')
            if namespace is not None and body_ns and body_ns != namespace:
                raise ApiError.bad_request(
                    'the namespace of the provided object does not match the namespace sent on the request')
            namespace = namespace or body_ns
            meta['namespace'] = namespace
        else:
            meta.pop('namespace', None)
            namespace = None
        obj['apiVersion'] = res.api_version
        obj['kind'] = res.kind
        with self.lock:
            name = meta.get('name')
            if not name:
                prefix = meta.get('generateName')
                if not prefix:
                    raise ApiError.invalid(res, '', 'metadata.name: Required value: name or generateName is required')
                for _ in range(100):
                    name = prefix + ''.join(random.choices(_GENERATE_CHARS, k=5))
                    if (namespace, name) not in self._bucket(res).objects:
                        break
                meta['name'] = name
            if not isinstance(name, str) or len(name) > 253 or not _NAME_RE.fullmatch(name):
                raise ApiError.invalid(res, name, f'metadata.name: Invalid value: {name!r}: a lowercase RFC 1123'
                                                  ' subdomain must consist of lower case alphanumeric characters,'
                                                  " '-' or '.'")
            self._check_namespace(res, namespace, name)
            if (namespace, name) in self._bucket(res).objects:
                raise ApiError.already_exists(res, name)
            if meta.get('resourceVersion'):
                raise ApiError.bad_request('resourceVersion should not be set on objects to be created')
            for k in ('resourceVersion', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'managedFields',
                      'selfLink'):
                meta.pop(k, None)
            meta['uid'] = str(uuid.uuid4())
            meta['creationTimestamp'] = _now()
            if res.tracks_generation:
                meta['generation'] = 1
            if res.status:
                obj.pop('status', None)  # as for CRDs with the status subresource
            if res.key == ('', 'namespaces'):
                obj['status'] = {'phase': 'Active'}
                obj.setdefault('spec', {'finalizers': ['kubernetes']})
                meta.setdefault('labels', {})['kubernetes.io/metadata.name'] = name
            if res.key == CRD_RESOURCE.key:
                self._validate_crd(obj)
                obj['status'] = self._crd_status(obj)
            if dry_run:
                return _with_rv(obj, self._rv)
            return copy.deepcopy(self._commit(res, 'ADDED', obj, None))

    def get(self, res: ApiResource, namespace: str | None, name: str) -> Obj:
        with self.lock:
            return copy.deepcopy(self._current(res, namespace, name))

    def get_raw(self, res: ApiResource, namespace: str | None, name: str) -> Obj:
        """Like :meth:`get`, but the stored (immutable by convention) object itself: do not mutate."""
        with self.lock:
            return self._current(res, namespace, name)

    def list(
            self,
            res: ApiResource,
            namespace: str | None = None,
            *,
            label_selector: str | None = None,
            field_selector: str | None = None,
            copy_items: bool = True,
    ) -> tuple[list[Obj], int]:
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector)
        with self.lock:
            items = []
            for (ns, _), obj in self._bucket(res).objects.items():
                if namespace is not None and res.namespaced and ns != namespace:
                    continue
                if labels is not None and not labels((obj.get('metadata') or {}).get('labels') or {}):
                    continue
                if fields is not None and not fields(obj):
                    continue
                items.append(obj)
            rv = self._rv
        items.sort(key=lambda o: (o['metadata'].get('namespace') or '', o['metadata']['name']))
        return ([copy.deepcopy(o) for o in items] if copy_items else items), rv

    def patch(
            self,
            res: ApiResource,
            namespace: str | None,
            name: str,
            patch: Any,
            patch_type: str = 'merge',
            *,
            subresource: str | None = None,
            dry_run: bool = False,
    ) -> Obj:
        """Patch an object. ``patch_type``: ``merge``, ``json``, ``strategic``, or ``apply``."""
        with self.lock:
            old = self._current(res, namespace, name)
            try:
                if patch_type == 'json':
                    new = apply_json_patch(old, patch)
                elif patch_type == 'strategic':
                    if not isinstance(patch, dict):
                        raise ApiError.bad_request('a strategic merge patch must be a JSON object')
                    new = apply_strategic_merge_patch(copy.deepcopy(old), patch)
                elif patch_type in ('merge', 'apply'):
                    if not isinstance(patch, dict):
                        raise ApiError.bad_request('a merge patch must be a JSON object')
                    new = apply_merge_patch(copy.deepcopy(old), patch)
                else:
                    raise ApiError(415, 'UnsupportedMediaType', f'unsupported patch type: {patch_type}')
            except _JSONPatchError as e:
                raise ApiError.invalid(res, name, str(e)) from None
            return self._update(res, old, new, subresource=subresource, dry_run=dry_run)

    def replace(
            self,
            res: ApiResource,
            namespace: str | None,
            name: str,
            body: Any,
            *,
            subresource: str | None = None,
            dry_run: bool = False,
    ) -> Obj:
        if not isinstance(body, dict):
            raise ApiError.bad_request('the body of the request was in an unknown format; expected an object')
        meta = body.get('metadata') or {}
        if meta.get('name') and meta['name'] != name:
            raise ApiError.bad_request('the name of the object does not match the name on the URL')
        with self.lock:
            old = self._current(res, namespace, name)
            new = copy.deepcopy(body)
            new_meta = new.setdefault('metadata', {})
            if not new_meta.get('resourceVersion'):  # unconditional update
                new_meta['resourceVersion'] = old['metadata']['resourceVersion']
            return self._update(res, old, new, subresource=subresource, dry_run=dry_run)

    def _update(self, res: ApiResource, old: Obj, new: Any, *, subresource: str | None, dry_run: bool) -> Obj:
        name = old['metadata']['name']
        if subresource not in (None, 'status') or (subresource == 'status' and not res.status):
            raise ApiError.not_found(None)
        if not isinstance(new, dict) or not isinstance(new.get('metadata', {}), dict):
            raise ApiError.invalid(res, name, 'the result is not a valid object')
        new_meta = new.setdefault('metadata', {})
        old_meta = old['metadata']
        if str(new_meta.get('resourceVersion', old_meta['resourceVersion'])) != old_meta['resourceVersion']:
            raise ApiError.conflict(res, name)
        if subresource == 'status':  # only the status changes (as for the CRDs' status strategy)
            result = copy.deepcopy(old)
            if 'status' in new:
                result['status'] = new['status']
            else:
                result.pop('status', None)
            new = result
            new_meta = new['metadata']
        else:
            if res.status:  # the main endpoint ignores the status
                if 'status' in old:
                    new['status'] = copy.deepcopy(old['status'])
                else:
                    new.pop('status', None)
            for key in _SYSTEM_META:  # immutable or system-managed
                if key in old_meta:
                    new_meta[key] = old_meta[key]
                else:
                    new_meta.pop(key, None)
            new_meta.pop('managedFields', None)
            new['apiVersion'] = old['apiVersion']
            new['kind'] = old['kind']
            if old_meta.get('deletionTimestamp'):
                added = set(new_meta.get('finalizers') or []) - set(old_meta.get('finalizers') or [])
                if added:
                    raise ApiError.invalid(res, name, 'metadata.finalizers: Forbidden: no new finalizers can be'
                                                      ' added if the object is being deleted')
            if res.key == CRD_RESOURCE.key:
                self._validate_crd(new)
                if new.get('spec') != old.get('spec'):
                    new['status'] = self._crd_status(new)
        if _sans_volatile(new) == _sans_volatile(old):  # no-op: nothing bumped, nothing emitted
            return copy.deepcopy(old)
        if res.tracks_generation and _content(new) != _content(old):
            new_meta['generation'] = int(old_meta.get('generation') or 1) + 1
        if dry_run:
            return copy.deepcopy(new)
        stored = self._commit(res, 'MODIFIED', new, old)
        if new_meta.get('deletionTimestamp') and not new_meta.get('finalizers'):
            stored = self._commit(res, 'DELETED', stored, stored)
            self._after_delete()
        return copy.deepcopy(stored)

    def delete(
            self,
            res: ApiResource,
            namespace: str | None,
            name: str,
            *,
            preconditions: Mapping[str, Any] | None = None,
            dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """
        Delete an object. Returns (the object, whether it is gone now).
        With finalizers, it only gets a ``deletionTimestamp`` and stays until they are removed.
        """
        with self.lock:
            old = self._current(res, namespace, name)
            meta = old['metadata']
            if preconditions:
                if preconditions.get('uid') and preconditions['uid'] != meta.get('uid'):
                    raise ApiError.conflict(res, name, f'Precondition failed: UID in precondition:'
                                                       f' {preconditions["uid"]}, UID in object meta: {meta.get("uid")}')
                if preconditions.get('resourceVersion') and preconditions['resourceVersion'] != meta['resourceVersion']:
                    raise ApiError.conflict(res, name)
            if dry_run:
                return copy.deepcopy(old), False
            if res.key == ('', 'namespaces'):
                self._delete_namespace_contents(name)
            if meta.get('finalizers'):
                if meta.get('deletionTimestamp'):
                    return copy.deepcopy(old), False
                new = dict(old, metadata=dict(meta, deletionTimestamp=_now(), deletionGracePeriodSeconds=0))
                return copy.deepcopy(self._commit(res, 'MODIFIED', new, old)), False
            gone = self._commit(res, 'DELETED', old, old)
            self._after_delete()
            return copy.deepcopy(gone), True

    def _delete_namespace_contents(self, namespace: str) -> None:
        for res in self._served_storage():
            if not res.namespaced:
                continue
            for (ns, name) in [k for k in self._bucket(res).objects if k[0] == namespace]:
                try:
                    self.delete(res, ns, name)
                except ApiError:
                    pass

    def _served_storage(self) -> list[ApiResource]:
        """One resource per storage bucket (several versions may share one)."""
        seen: dict[tuple[str, str], ApiResource] = {}
        for res in self._resources.values():
            seen.setdefault(res.key, res)
        return list(seen.values())

    def _after_delete(self) -> None:
        if self.auto_gc and not getattr(self, '_in_gc', False):
            self.collect_garbage()

    def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """
        Emulate the garbage collector once: delete every object whose owners
        (``ownerReferences`` by uid) are all gone, repeatedly (cascades).
        Returns ``(resource, namespace, name)`` of the deleted objects.
        """
        deleted: list[tuple[str, str | None, str]] = []
        with self.lock:
            self._in_gc = True
            try:
                while True:
                    uids = {o['metadata'].get('uid') for b in self._buckets.values() for o in b.objects.values()}
                    victims = []
                    for res in self._served_storage():
                        for (ns, name), obj in self._bucket(res).objects.items():
                            meta = obj['metadata']
                            refs = meta.get('ownerReferences') or []
                            if refs and not meta.get('deletionTimestamp') and \
                                    not any(ref.get('uid') in uids for ref in refs):
                                victims.append((res, ns, name))
                    if not victims:
                        break
                    for res, ns, name in victims:
                        try:
                            self.delete(res, ns, name)
                        except ApiError:
                            continue
                        deleted.append((res.qualified, ns, name))
            finally:
                self._in_gc = False
        return deleted

    # --- CRDs <-> served resources ---

    def _validate_crd(self, obj: Obj) -> None:
        spec = obj.get('spec') or {}
        names = spec.get('names') or {}
        if not spec.get('group') or not names.get('plural') or not names.get('kind') or not spec.get('versions'):
            raise ApiError.invalid(CRD_RESOURCE, obj['metadata'].get('name'),
                                   'spec.group, spec.names.plural, spec.names.kind, spec.versions are required')
        expected = f"{names['plural']}.{spec['group']}"
        if obj['metadata'].get('name') != expected:
            raise ApiError.invalid(CRD_RESOURCE, obj['metadata'].get('name'),
                                   f'metadata.name: Invalid value: must be spec.names.plural+"."+spec.group: {expected}')

    @staticmethod
    def _crd_status(obj: Obj) -> Obj:
        spec = obj.get('spec') or {}
        names = dict(spec.get('names') or {})
        names.setdefault('singular', names.get('kind', '').lower())
        names.setdefault('listKind', f"{names.get('kind')}List")
        now = _now()
        return {
            'acceptedNames': names,
            'conditions': [
                {'type': 'NamesAccepted', 'status': 'True', 'reason': 'NoConflicts', 'message': 'no conflicts found',
                 'lastTransitionTime': now},
                {'type': 'Established', 'status': 'True', 'reason': 'InitialNamesAccepted',
                 'message': 'the initial names have been accepted', 'lastTransitionTime': now},
            ],
            'storedVersions': [v['name'] for v in spec.get('versions') or [] if v.get('storage')],
        }

    def _sync_crd(self, obj: Obj, *, deleted: bool) -> None:
        spec = obj.get('spec') or {}
        names = spec.get('names') or {}
        group, plural = spec.get('group'), names.get('plural')
        for key in [k for k in self._resources if k[0] == group and k[2] == plural]:
            del self._resources[key]
        if deleted:
            return
        for version in spec.get('versions') or []:
            if not version.get('served', True):
                continue
            self.register(ApiResource(
                group=group, version=version['name'], plural=plural, kind=names['kind'],
                namespaced=spec.get('scope', 'Namespaced') == 'Namespaced',
                status='status' in (version.get('subresources') or spec.get('subresources') or {}),
                singular=names.get('singular') or names['kind'].lower(),
                short_names=tuple(names.get('shortNames') or ()),
                categories=tuple(names.get('categories') or ()),
            ))

    @staticmethod
    def crd_for(res: ApiResource) -> Obj:
        """A minimal CRD object describing a custom resource."""
        version: Obj = {
            'name': res.version, 'served': True, 'storage': True,
            'schema': {'openAPIV3Schema': {'type': 'object', 'x-kubernetes-preserve-unknown-fields': True}},
        }
        if res.status:
            version['subresources'] = {'status': {}}
        names: Obj = {'plural': res.plural, 'singular': res.singular or res.kind.lower(), 'kind': res.kind,
                      'listKind': res.list_kind}
        if res.short_names:
            names['shortNames'] = list(res.short_names)
        if res.categories:
            names['categories'] = list(res.categories)
        return {
            'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
            'metadata': {'name': res.qualified},
            'spec': {'group': res.group, 'names': names, 'versions': [version],
                     'scope': 'Namespaced' if res.namespaced else 'Cluster'},
        }

    def upsert_crd(self, res: ApiResource) -> None:
        """Register a custom resource by creating/replacing its CRD object (watchers see it, e.g. kopf)."""
        crd = self.crd_for(res)
        with self.lock:
            existing = self._bucket(CRD_RESOURCE).objects.get((None, res.qualified))
            if existing is None:
                self.create(CRD_RESOURCE, crd)
            else:
                spec = copy.deepcopy(existing.get('spec') or {})
                versions = [v for v in spec.get('versions') or [] if v.get('name') != res.version]
                for v in versions:
                    v['storage'] = False
                spec['versions'] = versions + crd['spec']['versions']
                spec['names'] = crd['spec']['names']
                spec['scope'] = crd['spec']['scope']
                self.patch(CRD_RESOURCE, None, res.qualified, {'spec': spec})
            self.register(res)

    # --- watching (called in the emulator's event loop) ---

    def open_watch(
            self,
            res: ApiResource,
            namespace: str | None,
            *,
            resource_version: str | None,
            label_selector: str | None,
            field_selector: str | None,
            send_initial_events: bool,
    ) -> tuple[_Watcher, list[Obj], int]:
        """Atomically take the initial objects (if needed) and register a cursor. Raises 410 if too old."""
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector)
        with self.lock:
            bucket = self._bucket(res)
            initial: list[Obj] = []
            if send_initial_events or resource_version in (None, '', '0'):
                cursor = bucket.end
                ns = namespace if res.namespaced else None
                watcher = _Watcher(bucket, cursor, ns, labels, fields)
                initial = [obj for obj in bucket.objects.values() if watcher.matches(obj)]
                initial.sort(key=lambda o: (o['metadata'].get('namespace') or '', o['metadata']['name']))
            else:
                try:
                    rv = int(resource_version)
                except ValueError:
                    raise ApiError.bad_request(f'invalid resource version: {resource_version!r}') from None
                if rv < bucket.compacted_rv:
                    raise ApiError.gone(f'too old resource version: {rv} ({bucket.compacted_rv})')
                cursor = bucket.position_after(rv)
                watcher = _Watcher(bucket, cursor, namespace if res.namespaced else None, labels, fields)
            bucket.watchers.add(watcher)
            self.watch_count += 1
            return watcher, initial, self._rv

    def read_watch(self, watcher: _Watcher) -> list[bytes] | None:
        """New lines for a watcher since its cursor; ``None`` if it fell behind the retention (410)."""
        with self.lock:
            bucket = watcher.bucket
            if watcher.cursor < bucket.base:
                return None
            events = bucket.read(watcher.cursor)
            watcher.cursor = bucket.end
        lines = []
        for event in events:
            line = watcher.render(event)
            if line is not None:
                lines.append(line)
        return lines

    def close_watch(self, watcher: _Watcher) -> None:
        with self.lock:
            if watcher in watcher.bucket.watchers:
                watcher.bucket.watchers.discard(watcher)
                self.watch_count -= 1

    def watchers_of(self, res: ApiResource) -> int:
        with self.lock:
            return len(self._bucket(res).watchers)


# ----------------------------------------------------------------------------------------------
# HTTP layer on top of KMock
# ----------------------------------------------------------------------------------------------

def _json_response(data: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=_dumps(data), status=status, content_type='application/json')


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ('true', '1', 'yes')


@dataclasses.dataclass
class _Route:
    kind: str  # root, api, apis, group, groupversion, resource, version, other
    group: str = ''
    version: str = ''
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    watch_prefix: bool = False


def _route(path: str) -> _Route:
    parts = [p for p in path.split('/') if p]
    if not parts:
        return _Route('root')
    if parts[0] == 'version' and len(parts) == 1:
        return _Route('version')
    if parts[0] == 'api':
        if len(parts) == 1:
            return _Route('api')
        group, version, rest = '', parts[1], parts[2:]
    elif parts[0] == 'apis':
        if len(parts) == 1:
            return _Route('apis')
        if len(parts) == 2:
            return _Route('group', group=parts[1])
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return _Route('other')
    if not rest:
        return _Route('groupversion', group=group, version=version)
    route = _Route('resource', group=group, version=version)
    if rest[0] == 'watch':
        route.watch_prefix = True
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == 'namespaces' and not (group == '' and len(rest) == 3 and
                                                            rest[2] in ('status', 'finalize')):
        route.namespace = rest[1]
        rest = rest[2:]
    if not rest:
        return _Route('other')
    route.plural = rest[0]
    route.name = rest[1] if len(rest) > 1 else None
    route.subresource = '/'.join(rest[2:]) or None
    return route


@attrs.define(kw_only=True)
class EmulatorHandler(kmock.RawHandler):
    """
    KMock's raw handler with the Kubernetes API semantics of :class:`ObjectStore`.

    User-defined KMock reactions (``handler['patch', kmock.resource(...)] << 500``)
    take priority over the emulated API, which makes fault injection easy.
    """
    store: ObjectStore
    server_version: Mapping[str, str] = attrs.field(factory=lambda: {
        'major': '1', 'minor': '32', 'gitVersion': 'v1.32.0-kmock', 'gitCommit': '0' * 40,
        'gitTreeState': 'clean', 'buildDate': '2025-01-01T00:00:00Z', 'goVersion': 'go1.23',
        'compiler': 'gc', 'platform': 'linux/amd64',
    })
    record_requests: bool = True
    watch_poll_interval: float = 1.0  # how often idle watches check for closed client connections

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        response: aiohttp.web.StreamResponse
        try:
            route = _route(raw_request.path)
            request = self._make_request(raw_request, route, body)
            if self.record_requests:
                self._requests.append(request)
            response = await self._dispatch(request, route)
        except ApiError as e:
            response = _json_response(e.status(), e.code)
        except _kmock_rendering.StreamingError as e:  # a user-defined KMock stream failed midway
            response = e.args[0]
        except Exception as e:  # noqa: BLE001
            logger.exception('Emulator failure on %s %s', raw_request.method, raw_request.path_qs)
            if self._errors:
                self._errors[-1].append(e)
            status = ApiError(500, 'InternalError', f'{type(e).__name__}: {e}',
                              {'causes': [{'message': traceback.format_exc()}]}).status()
            response = _json_response(status, 500)
        if not response.prepared:
            response.force_close()  # "Connection: close": no keep-alive reuse races
        return response

    def _make_request(self, raw: aiohttp.web.BaseRequest, route: _Route, body: bytes) -> kmock.Request:
        params = dict(raw.query)
        data: Any = None
        if body and 'protobuf' not in (raw.content_type or ''):
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        action: kmock.action | None = None
        resource = None
        if route.kind == 'resource':
            resource = kmock.resource(route.group, route.version, route.plural)
            if raw.method == 'GET':
                action = (kmock.action.WATCH if route.watch_prefix or _truthy(params.get('watch')) else
                          kmock.action.LIST if route.name is None else kmock.action.FETCH)
            elif raw.method == 'POST' and route.name is None:
                action = kmock.action.CREATE
            elif raw.method in ('PATCH', 'PUT') and route.name is not None:
                action = kmock.action.UPDATE
            elif raw.method == 'DELETE':
                action = kmock.action.DELETE
        return kmock.Request(
            id=len(self._requests), raw_request=raw, url=raw.url, method=raw.method,
            params=params, headers=dict(raw.headers), cookies=dict(raw.cookies),
            body=body, text=body.decode('utf-8', errors='replace'), data=data,
            action=action, resource=resource, namespace=route.namespace, name=route.name,
            subresource=route.subresource,
        )

    async def _dispatch(self, request: kmock.Request, route: _Route) -> aiohttp.web.StreamResponse:
        if self._payloads:  # user-defined KMock reactions go first
            try:
                return await kmock.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
        raw = request._raw_request
        assert raw is not None
        method = raw.method
        if route.kind == 'resource':
            return await self._serve_resource(request, route, raw)
        if method != 'GET':
            raise ApiError(405, 'MethodNotAllowed', f'the server does not allow this method on {raw.path}')
        if route.kind == 'root':
            return _json_response({'paths': self._paths()})
        if route.kind == 'version':
            return _json_response(dict(self.server_version))
        if route.kind == 'api':
            host = f'{raw.host}'
            return _json_response({'kind': 'APIVersions', 'versions': ['v1'],
                                   'serverAddressByClientCIDRs': [{'clientCIDR': '0.0.0.0/0', 'serverAddress': host}]})
        if route.kind == 'apis':
            return _json_response({'kind': 'APIGroupList', 'apiVersion': 'v1', 'groups': self._groups()})
        if route.kind == 'group':
            for group in self._groups():
                if group['name'] == route.group:
                    return _json_response(dict(group, kind='APIGroup', apiVersion='v1'))
            raise ApiError.not_found(None)
        if route.kind == 'groupversion':
            resources = [r for r in self.store.resources() if r.group == route.group and r.version == route.version]
            if not resources:
                raise ApiError.not_found(None)
            return _json_response({
                'kind': 'APIResourceList', 'apiVersion': 'v1',
                'groupVersion': resources[0].group_version,
                'resources': [d for r in sorted(resources, key=lambda r: r.plural) for d in r.discovery()],
            })
        if raw.path in ('/healthz', '/livez', '/readyz'):
            return aiohttp.web.Response(text='ok')
        if raw.path == '/openapi/v3':
            return _json_response(self._openapi_v3_index())
        if raw.path.startswith('/openapi/v3/'):
            return _json_response(self._openapi_v3_doc(raw.path[len('/openapi/v3/'):]))
        raise ApiError.not_found(None)  # incl. /openapi/v2 (protobuf-only in reality)

    # Just enough OpenAPI v3 for kubectl's default `--validate=strict`: every resource's PATCH
    # accepts `fieldValidation`, so kubectl leaves the validation to the server (which accepts all).
    # No schemas: kubectl falls back to its compiled-in strategic merge (built-ins) or merge patches (CRs).

    def _openapi_v3_index(self) -> Obj:
        gvs = sorted({(r.group, r.version) for r in self.store.resources()})
        paths = {}
        for group, version in gvs:
            key = f'apis/{group}/{version}' if group else f'api/{version}'
            digest = hashlib.sha256(_dumps(self._openapi_v3_doc(key))).hexdigest()[:32].upper()
            paths[key] = {'serverRelativeURL': f'/openapi/v3/{key}?hash={digest}'}
        return {'paths': paths}

    def _openapi_v3_doc(self, key: str) -> Obj:
        parts = key.strip('/').split('/')
        if parts[0] == 'api' and len(parts) == 2:
            group, version = '', parts[1]
        elif parts[0] == 'apis' and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise ApiError.not_found(None)
        resources = [r for r in self.store.resources() if r.group == group and r.version == version]
        if not resources:
            raise ApiError.not_found(None)
        paths: Obj = {}
        for res in sorted(resources, key=lambda r: r.plural):
            gvk = {'group': group, 'version': version, 'kind': res.kind}
            patch = {
                'operationId': f'patch{res.kind}', 'x-kubernetes-action': 'patch',
                'x-kubernetes-group-version-kind': gvk,
                'parameters': [{'name': name, 'in': 'query', 'schema': {'type': 'string', 'uniqueItems': True}}
                               for name in ('dryRun', 'fieldManager', 'fieldValidation')],
                'requestBody': {'content': {ctype: {'schema': {'type': 'object'}} for ctype in (
                    'application/json-patch+json', 'application/merge-patch+json', 'application/apply-patch+yaml')}},
                'responses': {'200': {'description': 'OK'}},
            }
            path = res.url(namespace='{namespace}', name='{name}')
            paths[path] = {'patch': patch}
            if res.status:
                paths[f'{path}/status'] = {'patch': dict(patch, operationId=f'patch{res.kind}Status')}
        return {'openapi': '3.0.0', 'info': {'title': 'Kubernetes (KMock emulator)', 'version': 'v1.32.0'},
                'paths': paths, 'components': {'schemas': {}}}

    def _groups(self) -> list[Obj]:
        versions: dict[str, list[str]] = {}
        for res in self.store.resources():
            if res.group:
                vs = versions.setdefault(res.group, [])
                if res.version not in vs:
                    vs.append(res.version)
        groups = []
        for group, vs in sorted(versions.items()):
            vs = sorted(vs, key=_version_priority)
            groups.append({
                'name': group,
                'versions': [{'groupVersion': f'{group}/{v}', 'version': v} for v in vs],
                'preferredVersion': {'groupVersion': f'{group}/{vs[0]}', 'version': vs[0]},
            })
        return groups

    def _paths(self) -> list[str]:
        paths = {'/api', '/api/v1', '/apis', '/version', '/healthz', '/livez', '/readyz'}
        for res in self.store.resources():
            if res.group:
                paths.add(f'/apis/{res.group}')
                paths.add(f'/apis/{res.group}/{res.version}')
        return sorted(paths)

    async def _serve_resource(self, request: kmock.Request, route: _Route,
                              raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        store = self.store
        res = store.resource(route.group, route.version, route.plural or '')
        if res is None:
            raise ApiError.not_found(None)
        if route.namespace is not None and not res.namespaced:
            raise ApiError.not_found(None)
        namespace = route.namespace if res.namespaced else None
        params = request.params
        dry_run = params.get('dryRun') == 'All'
        method = raw.method

        if route.subresource not in (None, 'status') or (route.subresource == 'status' and not res.status):
            raise ApiError.not_found(None)
        if route.name is not None and res.namespaced and namespace is None:
            raise ApiError.not_found(None)

        if method == 'GET':
            if route.watch_prefix or _truthy(params.get('watch')):
                field_selector = params.get('fieldSelector')
                if route.name is not None:  # /watch/.../name (legacy)
                    extra = f'metadata.name={route.name}'
                    field_selector = f'{field_selector},{extra}' if field_selector else extra
                return await self._serve_watch(request, res, namespace, raw, field_selector)
            if route.name is None:
                return self._serve_list(request, res, namespace)
            return self._render_object(raw, res, store.get_raw(res, namespace, route.name))

        if method == 'POST':
            if route.name is not None:
                raise ApiError(405, 'MethodNotAllowed', f'POST is not supported on {raw.path}')
            if res.namespaced and namespace is None:
                raise ApiError.not_found(None)
            obj = store.create(res, self._body(raw, request), namespace, dry_run=dry_run)
            return _json_response(obj, 201)

        if method == 'PUT':
            if route.name is None:
                raise ApiError(405, 'MethodNotAllowed', f'PUT is not supported on {raw.path}')
            obj = store.replace(res, namespace, route.name, self._body(raw, request),
                                subresource=route.subresource, dry_run=dry_run)
            return _json_response(obj)

        if method == 'PATCH':
            if route.name is None:
                raise ApiError(405, 'MethodNotAllowed', f'PATCH is not supported on {raw.path}')
            ctype = (raw.content_type or '').lower()
            patch_type = {
                'application/merge-patch+json': 'merge',
                'application/json-patch+json': 'json',
                'application/strategic-merge-patch+json': 'strategic',
                'application/apply-patch+yaml': 'apply',
                'application/apply-patch+json': 'apply',
            }.get(ctype)
            if patch_type is None:
                raise ApiError(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format'
                                                            f' - accepted media types include: application/'
                                                            f'json-patch+json, application/merge-patch+json,'
                                                            f' application/apply-patch+yaml (got {ctype!r})')
            patch = self._body(raw, request, yaml_ok=(patch_type == 'apply'))
            if patch_type == 'json' and not isinstance(patch, list):
                raise ApiError.bad_request(
                    'json: cannot unmarshal object into Go value of type jsonpatch.Patch'
                    ' (a JSON patch must be a list of operations; with the kubernetes client, pass'
                    ' _content_type="application/merge-patch+json" to merge-patch with a dict)')
            if patch_type == 'apply':
                try:
                    obj = store.patch(res, namespace, route.name, patch, 'apply',
                                      subresource=route.subresource, dry_run=dry_run)
                except ApiError as e:
                    if e.code != 404 or route.subresource:
                        raise
                    obj = store.create(res, dict(patch, metadata=dict(patch.get('metadata') or {},
                                                                      name=route.name)),
                                       namespace, dry_run=dry_run)
                    return _json_response(obj, 201)
            else:
                obj = store.patch(res, namespace, route.name, patch, patch_type,
                                  subresource=route.subresource, dry_run=dry_run)
            return _json_response(obj)

        if method == 'DELETE':
            options = request.data if isinstance(request.data, dict) else {}
            dry_run = dry_run or 'All' in (options.get('dryRun') or [])
            if route.name is None:  # deletecollection
                items, _ = store.list(res, namespace, label_selector=params.get('labelSelector'),
                                      field_selector=params.get('fieldSelector'), copy_items=False)
                deleted = []
                for item in items:
                    try:
                        obj, _ = store.delete(res, item['metadata'].get('namespace'), item['metadata']['name'],
                                              dry_run=dry_run)
                        deleted.append(obj)
                    except ApiError:
                        pass
                return _json_response({'kind': res.list_kind, 'apiVersion': res.api_version,
                                       'metadata': {'resourceVersion': str(store.resource_version)},
                                       'items': deleted})
            obj, gone = store.delete(res, namespace, route.name, preconditions=options.get('preconditions'),
                                     dry_run=dry_run)
            if gone and not res.group:  # core resources answer with a Status; CRs with the object
                return _json_response({'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success',
                                       'details': {'name': route.name, 'kind': res.plural,
                                                   'uid': obj['metadata'].get('uid')}})
            return _json_response(obj)

        raise ApiError(405, 'MethodNotAllowed', f'{method} is not supported')

    @staticmethod
    def _body(raw: aiohttp.web.BaseRequest, request: kmock.Request, *, yaml_ok: bool = False) -> Any:
        ctype = (raw.content_type or '').lower()
        if 'protobuf' in ctype:
            raise ApiError(415, 'UnsupportedMediaType',
                           'the emulator does not speak protobuf; use JSON (e.g. kubectl create ... '
                           '--dry-run=client -o yaml | kubectl apply -f -)')
        if request.data is not None:
            return request.data
        if not request.body:
            raise ApiError.bad_request('the request body is empty')
        if yaml_ok or 'yaml' in ctype:
            try:
                return yaml.safe_load(request.body)
            except yaml.YAMLError as e:
                raise ApiError.bad_request(f'invalid YAML: {e}') from None
        raise ApiError.bad_request('the body of the request is not valid JSON')

    def _serve_list(self, request: kmock.Request, res: ApiResource, namespace: str | None) -> aiohttp.web.Response:
        params = request.params
        items, rv = self.store.list(res, namespace, label_selector=params.get('labelSelector'),
                                    field_selector=params.get('fieldSelector'), copy_items=False)
        meta: Obj = {'resourceVersion': str(rv)}
        limit = int(params['limit']) if params.get('limit', '').isdigit() and int(params['limit']) > 0 else None
        token = params.get('continue')
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (state['ns'], state['name'])
                rv = int(state['rv'])
            except (ValueError, KeyError, TypeError):
                raise ApiError.bad_request('invalid continue token') from None
            meta['resourceVersion'] = str(rv)
            items = [o for o in items if (o['metadata'].get('namespace') or '', o['metadata']['name']) > after]
        if limit is not None and len(items) > limit:
            items = items[:limit]
            last = items[-1]['metadata']
            state = {'rv': rv, 'ns': last.get('namespace') or '', 'name': last['name']}
            meta['continue'] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta['remainingItemCount'] = 0  # not exact; informative only
        accept = request.headers.get('Accept', '')
        if 'as=Table' in accept:
            return _json_response(self._table(res, items, meta))
        return _json_response({'kind': res.list_kind, 'apiVersion': res.api_version, 'metadata': meta,
                               'items': items})

    def _render_object(self, raw: aiohttp.web.BaseRequest, res: ApiResource, obj: Obj) -> aiohttp.web.Response:
        if 'as=Table' in raw.headers.get('Accept', ''):
            return _json_response(self._table(res, [obj], {'resourceVersion': obj['metadata']['resourceVersion']}))
        return _json_response(obj)

    @staticmethod
    def _table(res: ApiResource, items: list[Obj], meta: Obj) -> Obj:
        """Server-side printing for ``kubectl get`` (NAME, [STATUS/PHASE], AGE)."""
        columns = [
            {'name': 'Name', 'type': 'string', 'format': 'name', 'description': 'Name', 'priority': 0},
            {'name': 'Age', 'type': 'string', 'format': '', 'description': 'Age', 'priority': 0},
        ]
        now = datetime.datetime.now(datetime.timezone.utc)
        rows = []
        for obj in items:
            created = obj['metadata'].get('creationTimestamp')
            age = '<unknown>'
            if created:
                secs = int((now - datetime.datetime.strptime(created, '%Y-%m-%dT%H:%M:%SZ').replace(
                    tzinfo=datetime.timezone.utc)).total_seconds())
                age = f'{secs}s' if secs < 120 else f'{secs // 60}m' if secs < 7200 else f'{secs // 3600}h'
            rows.append({'cells': [obj['metadata']['name'], age], 'object': {
                'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1', 'metadata': obj['metadata']}})
        return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1', 'metadata': meta,
                'columnDefinitions': columns, 'rows': rows}

    async def _serve_watch(self, request: kmock.Request, res: ApiResource, namespace: str | None,
                           raw: aiohttp.web.BaseRequest, field_selector: str | None) -> aiohttp.web.StreamResponse:
        params = request.params
        store = self.store
        send_initial = _truthy(params.get('sendInitialEvents'))
        timeout: float | None = None
        if params.get('timeoutSeconds', '').isdigit() and int(params['timeoutSeconds']) > 0:
            timeout = float(params['timeoutSeconds'])
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = 'application/json'
        response.enable_chunked_encoding()
        response.force_close()
        try:
            watcher, initial, rv = store.open_watch(
                res, namespace, resource_version=params.get('resourceVersion'),
                label_selector=params.get('labelSelector'), field_selector=field_selector,
                send_initial_events=send_initial)
        except ApiError as e:
            if e.code != 410:
                raise
            await response.prepare(raw)  # as the apiserver: 200, then an ERROR event
            await response.write(_dumps({'type': 'ERROR', 'object': e.status()}) + b'\n')
            await response.write_eof()
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        try:
            await response.prepare(raw)
            chunk = b''.join(_dumps({'type': 'ADDED', 'object': obj}) + b'\n' for obj in initial)
            if send_initial:
                chunk += _dumps({'type': 'BOOKMARK', 'object': {
                    'kind': res.kind, 'apiVersion': res.api_version,
                    'metadata': {'resourceVersion': str(rv),
                                 'annotations': {'k8s.io/initial-events-end': 'true'}}}}) + b'\n'
            if chunk:
                await response.write(chunk)
            while not store.closed:
                watcher.wakeup.clear()
                lines = store.read_watch(watcher)
                if lines is None:  # fell behind the event log retention
                    error = ApiError.gone('too old resource version: the watch fell behind')
                    await response.write(_dumps({'type': 'ERROR', 'object': error.status()}) + b'\n')
                    break
                if lines:
                    await response.write(b''.join(lines))
                    continue
                wait = self.watch_poll_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    await asyncio.wait_for(watcher.wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    transport = raw.transport
                    if transport is None or transport.is_closing():
                        break  # the client has gone
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client disconnected or the server is stopping
        finally:
            store.close_watch(watcher)
        return response


def _version_priority(version: str) -> tuple[int, int, int]:
    m = re.fullmatch(r'v(\d+)(?:(alpha|beta)(\d+))?', version)
    if not m:
        return (3, 0, 0)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    return ({None: 0, 'beta': 1, 'alpha': 2}[stage], -major, -minor)


class _Server(kmock.Server):
    """:class:`kmock.Server` that tolerates non-LIFO shutdowns of several servers in one process."""

    async def __aexit__(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        interceptor = self._managed_interceptor
        if interceptor is not None and aiohttp.connector.TCPConnector._resolve_host is not \
                interceptor._own_resolver:  # type: ignore[attr-defined]
            # Another server's resolver wraps ours; ours only maps this host:port to itself,
            # so it can harmlessly stay in the chain. Skip its removal instead of failing.
            interceptor._cascaded_resolver = None
            self._managed_interceptor = _NoopInterceptor()  # type: ignore[assignment]
        await super().__aexit__(exc_type, exc_value, tb)


class _NoopInterceptor:
    async def __aexit__(self, *args: Any) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# The sync facade: a server in a background thread
# ----------------------------------------------------------------------------------------------

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
        handler = EmulatorHandler(store=self.store, record_requests=self._record_requests)
        self.kmock = handler
        try:
            async with handler, _Server(handler, host=self._host, port=self._port) as server:
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
