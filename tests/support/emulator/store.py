"""
The emulated cluster's state: :class:`ObjectStore`.

Stock KMock stores objects as they are sent: no ``uid``, ``resourceVersion``, ``generation``
or ``generateName``, and no separate ``status`` subresource; kopf stalls silently without
them, and the operator reads generations (``observedGeneration``) and owner uids. So every
write here goes through one path that stamps them, refuses what an apiserver refuses
(404, 409, 422 as :class:`ApiError`), appends to the resource's watch log and wakes its
watchers. The HTTP handler and the tests' helpers call the same methods.

At ~520 lines this is a little over the suite's ~500: the write path (create, update,
delete, finalizers, garbage collection) stays in one class so that no write can skip a check.
"""
from __future__ import annotations

import asyncio
import copy
import random
import re
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from . import crds
from .common import Obj, now
from .errors import ApiError
from .patches import JSONPatchError, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch
from .registry import ResourceRegistry
from .resources import CRD_RESOURCE, ApiResource
from .selectors import parse_field_selector, parse_label_selector
from .watchlog import Bucket, Watcher, WatchEvent

_NAME_RE = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')
_GENERATE_CHARS = 'bcdfghjklmnpqrstvwxz2456789'
_SYSTEM_META = ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp',
                'deletionGracePeriodSeconds', 'generation', 'resourceVersion', 'selfLink')


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


class ObjectStore(ResourceRegistry):
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
        super().__init__(event_retention=event_retention)
        self.strict_namespaces = strict_namespaces
        self.auto_gc = auto_gc
        self._rv = 0
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

    def _notify(self, bucket: Bucket) -> None:
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

    # --- internals ---

    @property
    def resource_version(self) -> int:
        return self._rv

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
        bucket.append(WatchEvent(rv, type, obj, prev))
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
            meta['creationTimestamp'] = now()
            if res.tracks_generation:
                meta['generation'] = 1
            if res.status:
                obj.pop('status', None)  # as for CRDs with the status subresource
            if res.key == ('', 'namespaces'):
                obj['status'] = {'phase': 'Active'}
                obj.setdefault('spec', {'finalizers': ['kubernetes']})
                meta.setdefault('labels', {})['kubernetes.io/metadata.name'] = name
            if res.key == CRD_RESOURCE.key:
                crds.validate_crd(obj)
                obj['status'] = crds.crd_status(obj)
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
            except JSONPatchError as e:
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
                crds.validate_crd(new)
                if new.get('spec') != old.get('spec'):
                    new['status'] = crds.crd_status(new)
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
                new = dict(old, metadata=dict(meta, deletionTimestamp=now(), deletionGracePeriodSeconds=0))
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

    def _sync_crd(self, obj: Obj, *, deleted: bool) -> None:
        spec = obj.get('spec') or {}
        group, plural = spec.get('group'), (spec.get('names') or {}).get('plural')
        for key in [k for k in self._resources if k[0] == group and k[2] == plural]:
            del self._resources[key]
        if deleted:
            return
        for res in crds.served_resources(obj):
            self.register(res)

    crd_for = staticmethod(crds.crd_for)

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
    ) -> tuple[Watcher, list[Obj], int]:
        """Atomically take the initial objects (if needed) and register a cursor. Raises 410 if too old."""
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector)
        with self.lock:
            watcher, initial = self._bucket(res).watch(
                namespace if res.namespaced else None, labels, fields, resource_version=resource_version,
                from_now=send_initial_events or resource_version in (None, '', '0'))
            self.watch_count += 1
            return watcher, initial, self._rv

    def read_watch(self, watcher: Watcher) -> list[bytes] | None:
        """New lines for a watcher since its cursor; ``None`` if it fell behind the retention (410)."""
        with self.lock:
            events = watcher.bucket.take(watcher)
        if events is None:
            return None
        lines = []
        for event in events:
            line = watcher.render(event)
            if line is not None:
                lines.append(line)
        return lines

    def close_watch(self, watcher: Watcher) -> None:
        with self.lock:
            if watcher in watcher.bucket.watchers:
                watcher.bucket.watchers.discard(watcher)
                self.watch_count -= 1

    def watchers_of(self, res: ApiResource) -> int:
        with self.lock:
            return len(self._bucket(res).watchers)

