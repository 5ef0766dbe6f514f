"""
Served resources: what discovery reports about each one and how the store treats it.

:data:`BUILTIN_RESOURCES` are served from the start; :data:`CUSTOM_RESOURCES`
(rlhf.dev, ray.io, kopf.dev) are registered through CRD objects, so a running
kopf sees them appear as it would on a real cluster.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .common import Obj

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
    _res('networking.k8s.io/v1', 'networkpolicies', 'NetworkPolicy', short_names=('netpol',)),
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
