"""The CRD is generated from the spec model: no drift, structural, CEL rules that hold."""

import copy
from pathlib import Path

import celpy
import pytest
import yaml

from rlhf_api import crd
from rlhf_api.validation import parse_job
from support.jobs import job

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


def schema():
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_a_fresh_generation():
    assert COMMITTED.read_text() == crd.crd_yaml(), "crds/ is stale: run `rlhf crd -o crds/rlhf.dev_rlhfjobs.yaml`"


def test_crd_is_a_structural_schema():
    assert crd.structural_problems(schema()) == []
    text = COMMITTED.read_text()
    for forbidden in ("$ref", "$defs", "definitions:", "const:", "oneOf", "allOf"):
        assert forbidden not in text


def test_crd_is_a_valid_apiextensions_v1_object():
    from k8s_schemas import core_errors

    assert core_errors(crd.crd()) == []
    assert "exclusiveMinimum: 0" not in COMMITTED.read_text()  # OpenAPI v3.0 wants a boolean


def test_crd_names_and_subresources():
    c = crd.crd()
    assert c["metadata"]["name"] == "rlhfjobs.rlhf.dev"
    names = c["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("RLHFJob", "rlhfjobs", ["rlhf"])
    version = c["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {col["name"]: col["jsonPath"] for col in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Step"] == ".status.progress.step"
    assert columns["Reward"] == ".status.progress.rewardMean"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_status_keeps_kopf_bookkeeping_through_pruning():
    status = schema()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    for field in ("phase", "conditions", "rayJobName", "codeHash", "progress", "lastCheckpoint", "attempts",
                  "startTime", "completionTime", "observedGeneration", "dashboardURL", "rayClusterName"):
        assert field in status["properties"]


def test_free_form_parts_preserve_unknown_fields():
    spec = schema()["properties"]["spec"]["properties"]
    # Volume sources are typed as the core types they are, one of them, nothing unknown kept.
    for volume in (spec["checkpoint"]["properties"]["volume"], spec["cluster"]["properties"]["volumes"]["items"]["properties"]["source"]):
        assert "x-kubernetes-preserve-unknown-fields" not in volume
        assert volume["properties"]["persistentVolumeClaim"]["required"] == ["claimName"]
        assert (volume["minProperties"], volume["maxProperties"]) == (1, 1)
    tolerations = spec["cluster"]["properties"]["trainer"]["properties"]["tolerations"]
    assert tolerations["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["cluster"]["properties"]["head"]["properties"]["cpu"]["x-kubernetes-int-or-string"] is True


# ----------------------------------------------------------------- CEL, evaluated with a CEL interpreter


def apply_defaults(node_schema, value):
    """Structural defaulting as the API server does it: top-down, only where a field is absent."""
    if isinstance(value, dict) and node_schema.get("type") == "object":
        for name, child in (node_schema.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in node_schema:
        value = [apply_defaults(node_schema["items"], v) for v in value]
    return value


def cel_failures(new, old=None, node_schema=None):
    """Messages of every x-kubernetes-validations rule that fails on ``new`` (and ``old``)."""
    node_schema = node_schema or schema()["properties"]["spec"]
    env = celpy.Environment()
    failures = []
    for rule in node_schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        if not env.program(env.compile(rule["rule"])).evaluate(activation):
            failures.append(rule["message"])
    for name, child in (node_schema.get("properties") or {}).items():
        if isinstance(new, dict) and name in new and child.get("type") == "object":
            sub_old = old.get(name) if isinstance(old, dict) else None
            failures += cel_failures(new[name], sub_old, child)
    return failures


def defaulted_spec(doc):
    return apply_defaults(schema()["properties"]["spec"], copy.deepcopy(doc["spec"]))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_passes_the_crd_cel_rules(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "RLHFJob"]
    for doc in docs:
        assert cel_failures(defaulted_spec(doc)) == []


@pytest.mark.parametrize("overrides, message", [
    ({"reward": None}, "set spec.reward (function, remote or model) or spec.agent"),
    ({"reward": {"function": {"path": "a.py"}, "remote": {"url": "http://x"}}}, "set exactly one of reward.function, reward.remote or reward.model"),
    ({"reward": {"function": {"path": "a.py", "inline": "x"}}}, "set exactly one of inline, configMapRef or path"),
    ({"algorithm": {"advantageEstimator": "rloo"}}, "group estimators (rloo, group_norm, dr_grpo, reinforce_baseline) need nSamplesPerPrompt >= 2"),
    ({"algorithm": {"advantageEstimator": "gae", "dynamicFiltering": {"enabled": True}}}, "dynamicFiltering needs nSamplesPerPrompt >= 2"),
    ({"algorithm": {"advantageEstimator": "rloo", "nSamplesPerPrompt": 2, "dynamicFiltering": {"enabled": True, "scoreRange": [1, 0]}}},
     "dynamicFiltering.scoreRange must be [lo, hi] with lo < hi"),
    ({"training": {"trainBatchSize": 10, "microBatchSize": 4}}, "trainBatchSize must be a multiple of microBatchSize * trainers"),
])
def test_cel_rules_reject_what_the_model_rejects(overrides, message):
    doc = job(**overrides)
    assert message in cel_failures(defaulted_spec(doc))
    with pytest.raises(Exception):
        parse_job(doc)


def test_cel_transition_rules_make_running_job_fields_immutable():
    old = defaulted_spec(job())
    assert cel_failures(defaulted_spec(job(suspend=True, activeDeadlineSeconds=60)), old) == []
    failures = cel_failures(defaulted_spec(job(model={"path": "/models/other"})), old)
    assert failures == ["spec.model is immutable: create a new RLHFJob to change it"]


def test_crd_defaults_match_the_model_defaults():
    """What the API server stores after defaulting is what the model would use."""
    doc = job()
    defaulted = defaulted_spec(doc)
    from_model = parse_job(doc).spec.dump()
    for section in ("algorithm", "rollout", "training", "checkpoint"):
        assert defaulted[section] == from_model[section], section
