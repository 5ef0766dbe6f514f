"""Imports of reward code resolved before anything runs, in the operator: the admission webhook
refuses inline code whose imports the worker image cannot resolve (a warning on a custom
cluster.image), and launch does the same for code kept in ConfigMaps; nothing is created."""

import json
import shutil
import urllib.request
import uuid

import pytest

from support.operator_env import NS, RAYJOBS, conditions, rlhfjob, start_with_webhook, wait_phase

TAIL = "\ndef reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"


def with_code(code, **cluster):
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"inline": code}}
    if cluster:
        spec["cluster"] = cluster
    return rlhfjob(spec=spec)


@pytest.fixture
def review(kube, operator, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    port, context = start_with_webhook(kube, operator, tmp_path)

    def send(obj):
        request = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": str(uuid.uuid4()), "operation": "CREATE",
            "kind": {"group": "rlhf.dev", "version": "v1alpha1", "kind": "RLHFJob"},
            "resource": {"group": "rlhf.dev", "version": "v1alpha1", "resource": "rlhfjobs"},
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "object": obj, "oldObject": None, "dryRun": False, "userInfo": {"username": "alice"}}}
        http = urllib.request.Request(f"https://127.0.0.1:{port}/validate-rlhfjob", data=json.dumps(request).encode(),
                                      headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(http, context=context, timeout=10) as response:
            return json.load(response)["response"]
    return send


def test_admission_refuses_an_import_the_default_image_cannot_resolve(review):
    response = review(with_code("import os\nimport not_a_module\n" + TAIL))
    assert response["allowed"] is False and response["status"]["code"] == 422
    message = response["status"]["message"]
    assert "spec.reward.function.inline: reward_func.py, line 2: `import not_a_module`" in message
    assert "fix:" in message


def test_admission_admits_a_custom_image_with_a_warning(review):
    response = review(with_code("import my_private_grader\n" + TAIL, image="registry.example.com/mine:3"))
    assert response["allowed"] is True
    assert any("my_private_grader" in w and "registry.example.com/mine:3" in w for w in response.get("warnings", []))


def test_admission_admits_resolvable_imports_without_warnings(review):
    response = review(with_code("import json\nimport numpy as np\nfrom torch import tensor\n" + TAIL))
    # The only warning left is the spec's own (checkpoints not on a PVC, rlhf_api.advice): none about imports.
    assert response["allowed"] is True
    assert [w for w in response.get("warnings") or [] if not w.startswith("spec.checkpoint.volume")] == []


def test_launch_refuses_configmap_code_with_an_unresolvable_import_and_creates_nothing(kube, operator):
    operator.start()
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rw", "namespace": NS},
                 "data": {"reward_func.py": "import sklearnn\n" + TAIL}})
    spec = rlhfjob()["spec"]
    spec["reward"] = {"function": {"configMapRef": {"name": "rw"}}}
    kube.create(rlhfjob(spec=spec))
    status = wait_phase(kube, "Failed", "ValidationFailed")
    assert "reward_func.py, line 1: `import sklearnn`" in status["message"]
    assert conditions(status)["Validated"]["status"] == "False"
    assert kube.get(RAYJOBS, "demo", NS) is None
    assert kube.list("v1/configmaps", NS, label_selector="rlhf.dev/job-name=demo") == []
