"""The baseline for bench/operator_scale.py: a bare kopf operator that creates one ConfigMap
per RLHFJob with the same kubernetes client, and nothing else."""

import functools

import kopf
import kubernetes


@functools.cache
def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.posting.enabled = False
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.execution.max_workers = 16


@kopf.on.create("rlhf.dev", "v1alpha1", "rlhfjobs")
def create_configmap(name: str, namespace: str, uid: str, **_):
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-bare", "namespace": namespace,
                         "ownerReferences": [{"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "name": name, "uid": uid}]},
            "data": {"job": name}}
    core().create_namespaced_config_map(namespace, body)
