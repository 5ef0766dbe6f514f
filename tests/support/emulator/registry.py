"""
Which resources are served, and where each one's objects live.

:class:`ResourceRegistry` is the base of :class:`~.store.ObjectStore`: it maps
group/version/plural to an :class:`ApiResource` (what discovery lists) and each
group/plural to one :class:`Bucket` (objects and their event log), shared by all
versions of a resource as one etcd prefix is. It also resolves the notations tests
and kubectl use for a resource (``cm``, ``rlhfjobs.rlhf.dev``, ``v1/configmaps``, ...).
"""
from __future__ import annotations

import re
import threading

from .resources import ApiResource
from .watchlog import Bucket


class ResourceRegistry:
    """Served resources and their storage buckets, under one re-entrant lock."""

    def __init__(self, *, event_retention: int) -> None:
        self.event_retention = event_retention
        self.lock = threading.RLock()
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._resources: dict[tuple[str, str, str], ApiResource] = {}  # (group, version, plural)

    def register(self, res: ApiResource) -> ApiResource:
        """Serve a resource (discovery + storage), replacing a same-named one. No CRD object."""
        with self.lock:
            self._resources[(res.group, res.version, res.plural)] = res
            self._buckets.setdefault(res.key, Bucket(self.event_retention))
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

    def _bucket(self, res: ApiResource) -> Bucket:
        return self._buckets.setdefault(res.key, Bucket(self.event_retention))

    def _served_storage(self) -> list[ApiResource]:
        """One resource per storage bucket (several versions may share one)."""
        seen: dict[tuple[str, str], ApiResource] = {}
        for res in self._resources.values():
            seen.setdefault(res.key, res)
        return list(seen.values())
