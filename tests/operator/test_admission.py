"""The validating admission webhook: kopf's HTTPS server answering real AdmissionReview requests."""

import json
import shutil
import urllib.request
import uuid

import pytest

from support.operator_env import rlhfjob, start_with_webhook

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture
def webhook(kube, operator, tmp_path):
    port, context = start_with_webhook(kube, operator, tmp_path)

    def review(operation, obj, old=None):
        request = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": str(uuid.uuid4()), "operation": operation,
            "kind": {"group": "rlhf.dev", "version": "v1alpha1", "kind": "RLHFJob"},
            "resource": {"group": "rlhf.dev", "version": "v1alpha1", "resource": "rlhfjobs"},
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "object": obj, "oldObject": old, "dryRun": False,
            "userInfo": {"username": "alice"},
        }}
        http = urllib.request.Request(f"https://127.0.0.1:{port}/validate-rlhfjob", data=json.dumps(request).encode(),
                                      headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(http, context=context, timeout=10) as response:
            return json.load(response)["response"]

    return review


def test_valid_job_is_admitted(webhook):
    assert webhook("CREATE", rlhfjob())["allowed"] is True


def test_invalid_job_is_rejected_naming_the_field(webhook):
    bad = rlhfjob()
    bad["spec"]["algorithm"]["nSamplesPerPrompt"] = 1
    response = webhook("CREATE", bad)
    assert response["allowed"] is False
    assert "spec.algorithm.nSamplesPerPrompt" in response["status"]["message"]
    assert response["status"]["code"] == 422


def test_immutable_edit_is_rejected_but_suspend_is_allowed(webhook):
    old = rlhfjob()
    suspended = rlhfjob()
    suspended["spec"]["suspend"] = True
    assert webhook("UPDATE", suspended, old)["allowed"] is True
    moved = rlhfjob()
    moved["spec"]["model"] = {"path": "/models/other"}
    response = webhook("UPDATE", moved, old)
    assert response["allowed"] is False and "spec.model" in response["status"]["message"]
