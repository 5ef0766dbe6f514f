"""
CustomResourceDefinitions and the resources they serve, in both directions.

A CRD created through the API starts serving its resources (and stops when deleted), so
kubectl can apply ``crds/`` and kopf, watching CRDs, rescans as on a real cluster;
registering a custom resource from a test writes its CRD object (:func:`crd_for`).
The store calls these; they only read and build plain objects.
"""
from __future__ import annotations

from .common import Obj, now
from .errors import ApiError
from .resources import CRD_RESOURCE, ApiResource


def validate_crd(obj: Obj) -> None:
    """Refuse (422) a CRD without the fields the apiserver requires, or with a wrong name."""
    spec = obj.get('spec') or {}
    names = spec.get('names') or {}
    if not spec.get('group') or not names.get('plural') or not names.get('kind') or not spec.get('versions'):
        raise ApiError.invalid(CRD_RESOURCE, obj['metadata'].get('name'),
                               'spec.group, spec.names.plural, spec.names.kind, spec.versions are required')
    expected = f"{names['plural']}.{spec['group']}"
    if obj['metadata'].get('name') != expected:
        raise ApiError.invalid(CRD_RESOURCE, obj['metadata'].get('name'),
                               f'metadata.name: Invalid value: must be spec.names.plural+"."+spec.group: {expected}')


def crd_status(obj: Obj) -> Obj:
    """The status the apiserver gives an accepted CRD: names accepted, Established."""
    spec = obj.get('spec') or {}
    names = dict(spec.get('names') or {})
    names.setdefault('singular', names.get('kind', '').lower())
    names.setdefault('listKind', f"{names.get('kind')}List")
    timestamp = now()
    return {
        'acceptedNames': names,
        'conditions': [
            {'type': 'NamesAccepted', 'status': 'True', 'reason': 'NoConflicts', 'message': 'no conflicts found',
             'lastTransitionTime': timestamp},
            {'type': 'Established', 'status': 'True', 'reason': 'InitialNamesAccepted',
             'message': 'the initial names have been accepted', 'lastTransitionTime': timestamp},
        ],
        'storedVersions': [v['name'] for v in spec.get('versions') or [] if v.get('storage')],
    }


def served_resources(obj: Obj) -> list[ApiResource]:
    """The resources a CRD object serves: one per served version."""
    spec = obj.get('spec') or {}
    names = spec.get('names') or {}
    group, plural = spec.get('group'), names.get('plural')
    served = []
    for version in spec.get('versions') or []:
        if not version.get('served', True):
            continue
        served.append(ApiResource(
            group=group, version=version['name'], plural=plural, kind=names['kind'],
            namespaced=spec.get('scope', 'Namespaced') == 'Namespaced',
            status='status' in (version.get('subresources') or spec.get('subresources') or {}),
            singular=names.get('singular') or names['kind'].lower(),
            short_names=tuple(names.get('shortNames') or ()),
            categories=tuple(names.get('categories') or ()),
        ))
    return served


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
