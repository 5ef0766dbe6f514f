"""
URL paths of the Kubernetes API, parsed into a :class:`Route`.

A path names a discovery document (``/api``, ``/apis/<group>``, ``/apis/<group>/<version>``),
``/version``, or a resource with an optional namespace, name and subresource; the legacy
``/watch/`` prefix is understood. Core paths ``/api/v1/namespaces/<name>[/status|/finalize]``
name a Namespace itself, not a namespace's contents (stock KMock answers 500 on
``/api/v1/namespaces``).
"""
from __future__ import annotations

import dataclasses


def truthy(value: str | None) -> bool:
    """A query flag as the apiserver reads it (``?watch=true``, ``=1``)."""
    return value is not None and value.lower() in ('true', '1', 'yes')


@dataclasses.dataclass
class Route:
    """What a path names."""
    kind: str  # root, api, apis, group, groupversion, resource, version, other
    group: str = ''
    version: str = ''
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    watch_prefix: bool = False


def parse_route(path: str) -> Route:
    """Parse a request path (without the query)."""
    parts = [p for p in path.split('/') if p]
    if not parts:
        return Route('root')
    if parts[0] == 'version' and len(parts) == 1:
        return Route('version')
    if parts[0] == 'api':
        if len(parts) == 1:
            return Route('api')
        group, version, rest = '', parts[1], parts[2:]
    elif parts[0] == 'apis':
        if len(parts) == 1:
            return Route('apis')
        if len(parts) == 2:
            return Route('group', group=parts[1])
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return Route('other')
    if not rest:
        return Route('groupversion', group=group, version=version)
    route = Route('resource', group=group, version=version)
    if rest[0] == 'watch':
        route.watch_prefix = True
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == 'namespaces' and not (group == '' and len(rest) == 3 and
                                                            rest[2] in ('status', 'finalize')):
        route.namespace = rest[1]
        rest = rest[2:]
    if not rest:
        return Route('other')
    route.plural = rest[0]
    route.name = rest[1] if len(rest) > 1 else None
    route.subresource = '/'.join(rest[2:]) or None
    return route

