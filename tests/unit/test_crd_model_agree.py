"""What the generated CRD accepts, the model accepts, and the reverse; and what both accept renders.

Specs are drawn two ways: from the CRD's own schema (every field, in and out of its bounds) and
as mutations of the examples. The CRD's verdict is the API server's, emulated: the JSON must
decode (no NaN or ±inf, integers within int64), nulls are pruned, defaults applied top-down, the
structural schema checked with unknown fields refused (kubectl's strict field validation), then
every CEL rule. ``python tests/unit/test_crd_model_agree.py N`` prints the counts for N draws.
"""

from __future__ import annotations

import copy
import math
import random
import string
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import celpy
import pytest
import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from k8s_schemas import core_errors, pod_from_template, rayjob_errors  # noqa: E402
from rlhf_api import crd  # noqa: E402
from rlhf_api.podsecurity import pod_specs  # noqa: E402
from rlhf_api.validation import InvalidJob, parse_job  # noqa: E402
from rlhf_operator.render import AGENT_FILE, REWARD_FILE, render  # noqa: E402
from support.jobs import REWARD_SOURCE, rlhfjob  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AGENT_SOURCE = (ROOT / "examples" / "math-agent" / "agent_func.py").read_text()
INT64 = (-2**63, 2**63 - 1)


def example_specs() -> list[dict[str, Any]]:
    specs = []
    for path in sorted((ROOT / "examples").glob("**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "RLHFJob":
                specs.append(doc["spec"])
    return specs


EXAMPLES = example_specs()


# ----------------------------------------------------------------- the CRD's verdict


@lru_cache(maxsize=None)
def spec_schema() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _draft7(node: Any) -> Any:
    """OpenAPI v3.0 → JSON Schema draft 7: boolean exclusive bounds, int-or-string, strict fields."""
    if isinstance(node, list):
        return [_draft7(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft7(v) for k, v in node.items() if not k.startswith("x-kubernetes-validations")}
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(flag) is True:
            out[flag] = out.pop(bound)
        elif out.get(flag) is False:
            out.pop(flag)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("type") == "object" and "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


# The API server's integer is an int64 it decoded as one: a float is never an integer here, because
# _as_sent turned every whole float that kubectl would send as an integer into one.
_TYPES = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=_TYPES)


@lru_cache(maxsize=None)
def _validator() -> jsonschema.Draft7Validator:
    return _Validator(_draft7(spec_schema()))


def _as_sent(value: Any) -> Any:
    """What reaches the API server: kubectl's JSON writes 1.0 as 1, read back as an int64."""
    if isinstance(value, dict):
        return {k: _as_sent(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_sent(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21 and INT64[0] <= value <= INT64[1]:
        return int(value)
    return value


def _decode_errors(value: Any, path: str = "spec") -> list[str]:
    """What the API server cannot decode: JSON has no NaN or infinities, and integers are int64."""
    if isinstance(value, bool):
        return []
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: {value} is not JSON"]
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return [f"{path}: {value} overflows int64"]
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in _decode_errors(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _decode_errors(v, f"{path}[{i}]")]
    return []


def _prune_nulls(node: dict[str, Any], value: Any) -> Any:
    """The API server drops null fields that are not nullable, where the schema knows the field."""
    if isinstance(value, dict) and node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        props = node.get("properties")
        extra = node.get("additionalProperties")
        out = {}
        for k, v in value.items():
            child = (props or {}).get(k) if props else extra if isinstance(extra, dict) else None
            if v is None and child is not None:
                continue
            out[k] = _prune_nulls(child, v) if child else v
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_prune_nulls(node["items"], v) for v in value]
    return value


def _apply_defaults(node: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and node.get("type") == "object":
        for name, child in (node.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = _apply_defaults(child, value[name])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [_apply_defaults(node["items"], v) for v in value]
    return value


_CEL = celpy.Environment()


@lru_cache(maxsize=None)
def _program(rule: str) -> Any:
    return _CEL.program(_CEL.compile(rule))


def _cel_errors(node: dict[str, Any], value: Any, path: str = "spec") -> list[str]:
    errors = []
    for rule in node.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            ok = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:  # an evaluation error refuses the object, as on the API server
            ok = exc
        if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name in value:
                errors += _cel_errors(child, value[name], f"{path}.{name}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(node["items"], item, f"{path}[{i}]")
    return errors


def crd_verdict(spec: Any) -> list[str]:
    """Why the API server would refuse ``spec`` under the generated CRD; empty when it stores it."""
    errors = _decode_errors(spec)
    if errors:
        return errors
    node = spec_schema()
    value = _apply_defaults(node, _prune_nulls(node, _as_sent(spec)))
    errors = [f"spec.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(value)]
    return errors or _cel_errors(node, value)


def model_verdict(spec: Any) -> list[str]:
    try:
        parse_job(rlhfjob(spec))
    except InvalidJob as exc:
        return [str(e) for e in exc.errors]
    return []


def render_errors(spec: Any) -> list[str]:
    """Every way the rendered objects of an accepted spec break the Kubernetes or KubeRay schemas."""
    job = parse_job(rlhfjob(spec))
    job.metadata.uid = "7f3c2a4e-1111-2222-3333-444455556666"
    objects = render(job, {REWARD_FILE: REWARD_SOURCE, AGENT_FILE: AGENT_SOURCE})
    errors = core_errors(objects[0]) + rayjob_errors(objects[1])
    for where, pod in pod_specs(objects[1]):
        errors += [f"{where}: {e}" for e in core_errors(pod_from_template({"metadata": {}, "spec": pod}))]
    return errors


# ----------------------------------------------------------------- drawing specs

_STRINGS = ["", "x", "a-b", "7", "1Gi", "500m", "1.5", "-1", "1e3", "/dev/shm", "/dev/shm/", "/etc/rlhf/config",
            "/data", "relative/path", "memory", "cpu", "nvidia.com/gpu", "example.com/x", "a" * 64, "UPPER",
            "-bad-", "x/y/z", "kubernetes.io/hostname", "http://reward:8000/score", "gae", "rloo", "Always",
            "/dev/shm/x", "/a//b", "/a/./b", "/a/..", "Prompt: {}", "amd.com/gpu", "requests.x.io/gpu",
            "node.kubernetes.io/gpu", "x.io/" + "a" * 64, "A.io/b", "a_b", "_a", "a\nb"]
_VALUES: list[Any] = [0, 1, -1, 2, 3, 4, 7, 64, 1024, 2**31, 2**63 - 1, 2**63, -2**63 - 1, 0.5, 1.5, -0.5, 1e-6,
                      1.0, 2.0, 8.0, 1e20, 1e21, 2.0**60, 2.0**63,
                      1e308, float("inf"), float("-inf"), float("nan"), True, False, None, [], [1, 0], [0.0, 1.0],
                      {}, {"a": "b"}, {"unknownField": 1}, *_STRINGS]
_SOURCES: list[Any] = [
    {"persistentVolumeClaim": {"claimName": "models"}}, {"persistentVolumeClaim": {"claimName": 7}},
    {"persistentVolumeClaim": {}}, {"persistentVolumeClaim": {"claimName": "x", "bogus": 1}},
    {"emptyDir": {}}, {"emptyDir": {"sizeLimit": "1Gi"}}, {"emptyDir": {"sizeLimit": "lots"}},
    {"configMap": {"name": "code", "items": [{"key": "a", "path": "a"}]}}, {"configMap": {"items": [{"key": "a"}]}},
    {"hostPath": {"path": "/"}}, {"emptyDir": {}, "configMap": {"name": "x"}}, {"emptyDir": 1},
    {"csi": {"driver": "d"}}, {"csi": {}}, {"downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
]


def _string_for(rng: random.Random, node: dict[str, Any]) -> str:
    if rng.random() < 0.5:
        return rng.choice(_STRINGS)
    n = rng.choice([1, 3, 8, 70, 300])
    return "".join(rng.choice(string.ascii_lowercase + "-./") for _ in range(n))


def draw_from_schema(rng: random.Random, node: dict[str, Any], depth: int = 0) -> Any:
    """A value shaped by ``node``, mostly within its bounds, sometimes just outside."""
    if node.get("x-kubernetes-int-or-string"):
        return rng.choice([rng.randint(-2, 64), rng.choice(["500m", "16Gi", "1.5", "x", "-1", "1e3", ""])])
    if node.get("x-kubernetes-preserve-unknown-fields"):
        if node.get("type") == "array" or "items" in node:
            return [rng.choice([{"key": "a", "operator": "Exists"}, {"bogus": 1}]) for _ in range(rng.randint(0, 2))]
        return copy.deepcopy(rng.choice(_SOURCES + [{}, {"nodeAffinity": {}}]))
    if "enum" in node:
        return rng.choice(node["enum"] + ["bogus"]) if rng.random() < 0.1 else rng.choice(node["enum"])
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props:
            required = set(node.get("required", []))
            return {k: draw_from_schema(rng, v, depth + 1) for k, v in props.items()
                    if (k in required and rng.random() < 0.97) or rng.random() < (0.5 if depth < 2 else 0.3)}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return {_string_for(rng, {}): draw_from_schema(rng, extra, depth + 1) for _ in range(rng.randint(0, 2))}
        return {}
    if kind == "array":
        items = node.get("items", {})
        return [draw_from_schema(rng, items, depth + 1) for _ in range(rng.choice([0, 1, 2, 2, 3]))]
    if kind == "integer":
        lo, hi = node.get("minimum", -10), node.get("maximum", 10_000)
        return rng.choice([rng.randint(int(lo), int(hi)), int(lo), int(hi), int(lo) - 1, int(hi) + 1, 2**63])
    if kind == "number":
        lo, hi = node.get("minimum", -1.0), node.get("maximum", 100.0)
        return rng.choice([rng.uniform(lo, hi), float(lo), float(hi), lo - 0.5, hi + 0.5, float("nan")])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return _string_for(rng, node)
    return rng.choice(_VALUES)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


def mutate(rng: random.Random, spec: dict[str, Any]) -> dict[str, Any]:
    """One to three changes at random places: a new value, a removed or an unknown field."""
    spec = copy.deepcopy(spec)
    for _ in range(rng.choice([1, 1, 2, 3])):
        path = rng.choice(_paths(spec)[1:])
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        op = rng.random()
        if op < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif op < 0.25 and isinstance(parent, dict):
            parent["unknownField"] = 1
        elif op < 0.4 and path[-1] in ("volume", "source"):
            parent[path[-1]] = copy.deepcopy(rng.choice(_SOURCES))
        elif op < 0.5 and isinstance(parent, dict):
            parent.setdefault(rng.choice(["labels", "annotations", "nodeSelector"]), {})
            parent[path[-1]] = {rng.choice(_STRINGS): rng.choice(_STRINGS)}
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(_VALUES))
    return spec


_CLUSTER_EXTRAS = [
    {"cluster": {"volumes": [{"name": "models", "mountPath": "/models", "source": {"persistentVolumeClaim": {"claimName": "m"}}}]}},
    {"cluster": {"head": {"labels": {"team": "a"}, "annotations": {"note": "x"}, "nodeSelector": {"pool": "gpu"}}}},
    {"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}},
]


def draw_spec(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.3:
        spec = draw_from_schema(rng, spec_schema())
        return spec if isinstance(spec, dict) else {}
    base = copy.deepcopy(rng.choice(EXAMPLES))
    if rng.random() < 0.5:
        for key, value in rng.choice(_CLUSTER_EXTRAS).items():
            base.setdefault(key, {}).update(copy.deepcopy(value))
    return mutate(rng, base)


# What only the model refuses, by design: keys of labels, annotations and nodeSelector (a CEL rule
# over a map's keys would cost, by the API server's estimate of 256 keys of unbounded length, more
# than a CRD may spend; the API server refuses them when KubeRay creates the pods), and inline
# Python that does not parse or lacks its entry point (rlhf_api.contract; no CEL reads Python).
MODEL_ONLY = ("name part ", "prefix part ", "a qualified name ", "inline reward code", "inline agent code")


def _model_only_by_design(model: list[str]) -> bool:
    return all(any(marker in m for marker in MODEL_ONLY) for m in model)


def judge(spec: dict[str, Any]) -> dict[str, Any]:
    """The two verdicts, and for a spec both accept, what its rendering gets wrong."""
    by_crd, by_model = crd_verdict(spec), model_verdict(spec)
    rendered = render_errors(spec) if not by_model else []
    return {"crd": by_crd, "model": by_model, "render": rendered}


# ----------------------------------------------------------------- the tests


def test_the_examples_are_accepted_by_both():
    for spec in EXAMPLES:
        assert judge(spec) == {"crd": [], "model": [], "render": []}


@pytest.mark.parametrize("patch, refused", [
    ({"cluster": {"head": {"annotations": {"container.apparmor.security.beta.kubernetes.io/ray-head": "unconfined"}}}}, True),
    ({"cluster": {"head": {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "runtime/default"}}}}, True),
    ({"cluster": {"head": {"annotations": {"container.apparmor.security.beta.kubernetes.io/x": "localhost/p"}}}}, False),
    ({"checkpoint": {"path": "/tmp"}}, True),
    ({"checkpoint": {"path": "/tmp/ckpt"}}, False),
    ({"cluster": {"volumes": [{"name": "hf", "mountPath": "/home/ray/.cache",
                               "source": {"persistentVolumeClaim": {"claimName": "hf"}}}]}}, True),
    ({"cluster": {"volumes": [{"name": "hf", "mountPath": "/home/ray/.cache/huggingface",
                               "source": {"persistentVolumeClaim": {"claimName": "hf"}}}]}}, False),
])
def test_crd_and_model_refuse_weakening_annotations_and_scratch_mount_points_alike(patch, refused):
    verdict = judge(_merge(EXAMPLES[0], patch))
    assert bool(verdict["crd"]) is refused and bool(verdict["model"]) is refused, verdict
    assert verdict["render"] == []


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=False))
def test_crd_and_model_agree_and_what_they_accept_renders_validly(rng):
    spec = draw_spec(rng)
    verdict = judge(spec)
    agree = bool(verdict["crd"]) == bool(verdict["model"])
    assert agree or (not verdict["crd"] and _model_only_by_design(verdict["model"])), (spec, verdict)
    assert verdict["render"] == [], (spec, verdict)


def count(n: int) -> dict[str, Any]:
    totals = {"drawn": 0, "crd_accepted": 0, "model_accepted": 0, "crd_only": 0, "crd_only_by_design": 0,
              "model_only": 0, "render_invalid": 0, "tracebacks": 0}
    samples: dict[str, list] = {"crd_only": [], "crd_only_by_design": [], "model_only": [], "tracebacks": [],
                                "render_invalid": []}
    for seed in range(n):
        spec = draw_spec(random.Random(seed))
        totals["drawn"] += 1
        try:
            v = judge(spec)
        except Exception as exc:  # noqa: BLE001 -- counted and shown
            totals["tracebacks"] += 1
            samples["tracebacks"].append((seed, repr(exc)[:300]))
            continue
        totals["crd_accepted"] += not v["crd"]
        totals["model_accepted"] += not v["model"]
        by_design = not v["crd"] and v["model"] and _model_only_by_design(v["model"])
        for key, hit in (("crd_only", not v["crd"] and v["model"] and not by_design), ("crd_only_by_design", by_design),
                         ("model_only", v["crd"] and not v["model"]),
                         ("render_invalid", bool(v["render"]))):
            if hit:
                totals[key] += 1
                samples[key].append((seed, (v["model"] or v["crd"] or v["render"])[:2]))
    return {"totals": totals, "samples": {k: s[:25] for k, s in samples.items()}}


if __name__ == "__main__":
    import pprint

    pprint.pprint(count(int(sys.argv[1]) if len(sys.argv) > 1 else 3000), width=200)
