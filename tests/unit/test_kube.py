"""The operator's API client layer: Events, retry classification, request serialization."""

import datetime

import pytest
from kubernetes import client

from rlhf_operator.kube import _ApiClient


def test_event_manifest_is_a_valid_core_event_about_the_job():
    from k8s_schemas import core_errors
    from rlhf_operator.kube import event_manifest

    job = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
           "metadata": {"name": "demo", "namespace": "team-a", "uid": "0f1e"}}
    event = event_manifest(job, "Warning", "ValidationFailed", "x" * 5000,
                           now=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), instance="op-0")
    assert core_errors(event) == []
    assert event["involvedObject"] == {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "name": "demo",
                                       "namespace": "team-a", "uid": "0f1e"}
    assert event["metadata"] == {"generateName": "demo.", "namespace": "team-a"}
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "ValidationFailed", 1024)
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-01-01T00:00:00Z"
    assert event["source"] == {"component": "rlhf-operator"} and event["reportingInstance"] == "op-0"


def test_api_outages_are_retried_soon_and_refusals_are_not():
    import kopf
    import urllib3
    from kubernetes.client.rest import ApiException

    from rlhf_operator.config import OperatorConfig
    from rlhf_operator.launch import retry_api_outages
    from rlhf_operator.kube import is_transient

    assert is_transient(ApiException(status=503)) and is_transient(ApiException(status=429))
    assert is_transient(urllib3.exceptions.NewConnectionError(None, "refused")) and is_transient(ConnectionResetError())
    assert not is_transient(ApiException(status=403)) and not is_transient(ApiException(status=422))
    assert not is_transient(ValueError("bug"))

    def handler(exc, **_):
        raise exc
    with pytest.raises(kopf.TemporaryError) as retried:
        retry_api_outages(handler)(ApiException(status=503), namespace="ns")
    assert retried.value.delay == OperatorConfig().api_retry_seconds
    with pytest.raises(ApiException):
        retry_api_outages(handler)(ApiException(status=403))



def test_plain_bodies_are_sent_as_they_are_and_models_still_converted():
    api = _ApiClient(client.Configuration())
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}
    assert api.sanitize_for_serialization(body) is body
    model = client.V1ObjectMeta(name="x", creation_timestamp=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
                                owner_references=[client.V1OwnerReference(api_version="v1", kind="K", name="o", uid="u")])
    converted = api.sanitize_for_serialization(model)
    assert converted == {"name": "x", "creationTimestamp": "2026-01-01T00:00:00+00:00",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u"}]}
