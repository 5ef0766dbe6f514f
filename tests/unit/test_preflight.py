"""preflight: what the API server or KubeRay would refuse in rendered objects, before any is created."""

import copy
from pathlib import Path

import pytest
import yaml

from k8s_schemas import KUBERAY_RAYJOB_CRD, rayjob_errors
from rlhf_operator.kuberay_schema import rayjob_schema
from rlhf_operator.preflight import MAX_CONFIGMAP_BYTES, preflight
from rlhf_operator.render import render
from rlhf_api.validation import parse_job
from support.jobs import REWARD_SOURCE, job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))
CODE = {"reward_func.py": REWARD_SOURCE, "agent_func.py": (ROOT / "examples/math-agent/agent_func.py").read_text()}


def rendered(doc):
    parsed = parse_job(doc)
    parsed.metadata.uid = "7f3c2a4e-1111-2222-3333-444455556666"
    return render(parsed, CODE)


def test_the_packaged_schema_is_kuberays():
    crd = yaml.safe_load(KUBERAY_RAYJOB_CRD.read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "description"}
        return [strip(v) for v in node] if isinstance(node, list) else node

    assert rayjob_schema() == strip(v1)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_renders_into_objects_that_pass(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "RLHFJob":
            assert preflight(rendered(doc)) == []


def test_a_rayjob_kuberay_would_refuse_is_refused_with_the_field():
    objects = rendered(job())
    rayjob = copy.deepcopy(objects[1])
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    head["spec"]["containers"][0]["ports"][0]["containerPort"] = "8265"
    head["spec"]["containers"][0]["restartPolicy"] = {"x": 1}
    rayjob["spec"]["shutdownAfterJobFinishes"] = "yes"
    rayjob["spec"]["entrypointNumCpus"] = 1
    rayjob["spec"]["bogus"] = 1
    head["metadata"]["labels"]["team"] = "-x"
    problems = preflight([objects[0], rayjob])
    assert "RayJob demo: spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].ports[0].containerPort:" \
           ' Invalid value: "8265": must be of type integer' in problems
    assert 'RayJob demo: spec.bogus: unknown field "bogus"' in problems
    assert "RayJob demo: spec.shutdownAfterJobFinishes: Invalid value: \"yes\": must be of type boolean" in problems
    assert any(p.startswith("RayJob demo: spec.rayClusterSpec.headGroupSpec.template.metadata.labels: Invalid value: '-x'")
               for p in problems)
    assert len(problems) == 5, problems
    # The schema-checking part agrees with the test suite's jsonschema-based check.
    assert len(rayjob_errors(rayjob)) >= 4


def test_oversized_objects_are_refused_with_their_sizes():
    objects = rendered(job())
    config_map = copy.deepcopy(objects[0])
    config_map["data"]["big.py"] = "#" * MAX_CONFIGMAP_BYTES
    problems = preflight([config_map])
    assert len(problems) == 1 and problems[0].startswith(
        f"{config_map['metadata']['name'].join(['ConfigMap ', ''])}: data: Too long: must have at most 1048576 bytes; it has"), problems
    assert "(1.00 MiB)" in problems[0]
    huge = copy.deepcopy(objects[1])
    huge["metadata"]["annotations"] = {"note": "x" * (3 * 1024 * 1024)}
    problems = preflight([huge])
    assert any("the API server accepts a request of at most 3145728 bytes (3.00 MiB)" in p for p in problems), problems
    assert any("metadata.annotations: Too long: must have at most 262144 bytes" in p for p in problems), problems
