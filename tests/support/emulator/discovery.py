"""
Discovery: what the server says it serves, derived from the registered resources.

kopf and kubectl find resources through ``/api``, ``/apis``, ``/apis/<group>`` and
``/api[s]/.../<version>``. Stock KMock names the core group version ``/v1``, and kopf
stalls silently on that; kopf also needs ``v1/namespaces`` listed (in namespaced mode) and
``v1/events`` (to post Events), both among the built-in resources.

The OpenAPI v3 documents are just enough for kubectl's default ``--validate=strict``:
every resource's PATCH accepts ``fieldValidation``, so kubectl leaves validation to the
server (which accepts all). There are no schemas: kubectl falls back to its compiled-in
strategic merge (built-ins) or merge patches (custom resources). ``/openapi/v2`` is 404.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .common import Obj, dumps
from .errors import ApiError
from .resources import ApiResource


def version_priority(version: str) -> tuple[int, int, int]:
    """Sort key for versions, as Kubernetes orders them: GA before beta before alpha, newest first."""
    m = re.fullmatch(r'v(\d+)(?:(alpha|beta)(\d+))?', version)
    if not m:
        return (3, 0, 0)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    return ({None: 0, 'beta': 1, 'alpha': 2}[stage], -major, -minor)


def core_versions(host: str) -> Obj:
    """``/api``: the core group's versions."""
    return {'kind': 'APIVersions', 'versions': ['v1'],
            'serverAddressByClientCIDRs': [{'clientCIDR': '0.0.0.0/0', 'serverAddress': host}]}


def groups(resources: Iterable[ApiResource]) -> list[Obj]:
    """The named API groups with their versions, the preferred one first."""
    versions: dict[str, list[str]] = {}
    for res in resources:
        if res.group:
            vs = versions.setdefault(res.group, [])
            if res.version not in vs:
                vs.append(res.version)
    result = []
    for group, vs in sorted(versions.items()):
        vs = sorted(vs, key=version_priority)
        result.append({
            'name': group,
            'versions': [{'groupVersion': f'{group}/{v}', 'version': v} for v in vs],
            'preferredVersion': {'groupVersion': f'{group}/{vs[0]}', 'version': vs[0]},
        })
    return result


def resource_list(resources: Iterable[ApiResource], group: str, version: str) -> Obj:
    """``/api/v1`` or ``/apis/<group>/<version>``: the resources served in one group version (else 404)."""
    served = [r for r in resources if r.group == group and r.version == version]
    if not served:
        raise ApiError.not_found(None)
    return {
        'kind': 'APIResourceList', 'apiVersion': 'v1',
        'groupVersion': served[0].group_version,
        'resources': [d for r in sorted(served, key=lambda r: r.plural) for d in r.discovery()],
    }


def root_paths(resources: Iterable[ApiResource]) -> list[str]:
    """``/``: the paths the server serves."""
    paths = {'/api', '/api/v1', '/apis', '/version', '/healthz', '/livez', '/readyz'}
    for res in resources:
        if res.group:
            paths.add(f'/apis/{res.group}')
            paths.add(f'/apis/{res.group}/{res.version}')
    return sorted(paths)


def openapi_v3_index(resources: list[ApiResource]) -> Obj:
    """``/openapi/v3``: one document per group version, addressed by its hash as kubectl expects."""
    gvs = sorted({(r.group, r.version) for r in resources})
    paths = {}
    for group, version in gvs:
        key = f'apis/{group}/{version}' if group else f'api/{version}'
        digest = hashlib.sha256(dumps(openapi_v3_doc(resources, key))).hexdigest()[:32].upper()
        paths[key] = {'serverRelativeURL': f'/openapi/v3/{key}?hash={digest}'}
    return {'paths': paths}


def openapi_v3_doc(resources: list[ApiResource], key: str) -> Obj:
    """``/openapi/v3/<key>``: a PATCH operation per resource (and status), without schemas."""
    parts = key.strip('/').split('/')
    if parts[0] == 'api' and len(parts) == 2:
        group, version = '', parts[1]
    elif parts[0] == 'apis' and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        raise ApiError.not_found(None)
    served = [r for r in resources if r.group == group and r.version == version]
    if not served:
        raise ApiError.not_found(None)
    paths: Obj = {}
    for res in sorted(served, key=lambda r: r.plural):
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
