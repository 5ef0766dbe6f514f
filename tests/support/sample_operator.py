"""
A tiny kopf operator used by the emulator's own tests (tests/test_emulator.py): ``KopfRunner(kube, 'support.sample_operator')``.

On creation of an ``rlhf.dev/v1alpha1`` RLHFJob it creates a ConfigMap owned
by the job (via the ``kubernetes`` client's default configuration, which
:meth:`KubeEmulator.use_as_default` / the ``kube`` fixture point at the emulator),
posts a k8s event, and writes the status. Spec changes update the ConfigMap.
Deletion is handled too (so kopf puts its finalizer on the jobs).
"""
import kopf
import kubernetes.client
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = 'rlhf.dev', 'v1alpha1', 'rlhfjobs'


def _configmap(name: str, spec: kopf.Spec) -> dict:
    return {
        'apiVersion': 'v1', 'kind': 'ConfigMap',
        'metadata': {'name': f'{name}-config', 'labels': {'rlhf.dev/job': name}},
        'data': {'model': str(spec.get('model', ''))},
    }


@kopf.on.create(GROUP, VERSION, PLURAL)
def job_created(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str,
                patch: kopf.Patch, **_: object) -> dict:
    cm = _configmap(name, spec)
    kopf.adopt(cm, owner=body)  # ownerReferences + namespace
    api = kubernetes.client.CoreV1Api()
    try:
        api.create_namespaced_config_map(namespace, cm)
    except ApiException as e:
        if e.status != 409:
            raise
    kopf.info(body, reason='ConfigCreated', message=f'Created ConfigMap {name}-config')
    patch.status['phase'] = 'Configured'
    return {'configMap': f'{name}-config'}  # stored by kopf as status.job_created


@kopf.on.update(GROUP, VERSION, PLURAL, field='spec.model')
def model_changed(name: str, namespace: str, new: object, **_: object) -> None:
    api = kubernetes.client.CoreV1Api()
    api.patch_namespaced_config_map(f'{name}-config', namespace, {'data': {'model': str(new)}},
                                    _content_type='application/merge-patch+json')


@kopf.on.delete(GROUP, VERSION, PLURAL)
def job_deleted(body: kopf.Body, name: str, **_: object) -> None:
    kopf.info(body, reason='Deleting', message=f'Job {name} is being deleted')
