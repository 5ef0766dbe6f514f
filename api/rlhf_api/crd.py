"""Generate the RLHFJob CustomResourceDefinition from the pydantic spec model.

Run ``rlhf crd > crds/rlhf.dev_rlhfjobs.yaml``; a test fails when the committed file drifts.

Pydantic's JSON Schema is not a Kubernetes *structural* schema, so it is rewritten:
``$ref``/``$defs`` are inlined, ``Optional[X]`` becomes X (absence is how Kubernetes says
"unset"), enums and literals become string enums, free-form maps are marked
``x-kubernetes-preserve-unknown-fields``, int-or-string quantities get
``x-kubernetes-int-or-string``, and CEL rules declared on the models become
``x-kubernetes-validations``.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from . import names as s
from .base import CEL, FREE_FORM, INT_OR_STRING, RAW_SCHEMA
from .jobstatus import RLHFJobStatus
from .spec import RLHFJobSpec

_DROP = {"title", "examples"}
# Bounds keep the API server's CEL cost estimates (which assume the largest possible
# list or map) far below its limits for the immutability rules that compare sub-objects.
MAX_ITEMS = 256
_OPTIONAL = "x-rlhf-optional"  # internal marker, removed before output
_RAW = "x-rlhf-raw"  # internal marker: a core type's schema, taken as it is
_STRUCTURAL_FORBIDDEN = {"$ref", "$defs", "definitions", "const", "oneOf", "allOf", "not", "additionalItems", "patternProperties", "dependencies", "prefixItems"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].split("/")[-1]]
            merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one resolved pydantic schema node into a structural OpenAPI v3 node."""
    node = {k: v for k, v in node.items() if k not in _DROP}

    if RAW_SCHEMA in node:
        raw = copy.deepcopy(node[RAW_SCHEMA])
        raw[_RAW] = raw[_OPTIONAL] = True  # never defaulted to {}: a source is given whole or not at all
        if "description" in node:
            raw["description"] = node["description"]
        return raw

    if node.pop(FREE_FORM, False):
        out: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
        if "description" in node:
            out["description"] = node["description"]
        if node.get("type") == "array" or ("anyOf" in node and any(b.get("type") == "array" for b in node["anyOf"])):
            out = {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                   **({"description": node["description"]} if "description" in node else {})}
        else:
            out["type"] = "object"
        if "default" in node and node["default"] not in (None, [], {}):
            out["default"] = node["default"]
        return out

    if node.pop(INT_OR_STRING, False):
        out = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        for key in ("description", "pattern", "minimum"):
            if key in node:
                out[key] = node[key]
        return out

    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express union {branches} structurally; mark it free-form or int-or-string")
        branch = _structural(branches[0])
        description = node.get("description", branch.get("description"))
        node = {**branch, **{k: v for k, v in node.items() if k not in ("default",) or v is not None}}
        if description:
            node["description"] = description
        if node.get("default") is None:
            node.pop("default", None)
        node.pop(INT_OR_STRING, None)
        node[_OPTIONAL] = True
        return node

    # JSON Schema 2020-12 writes exclusive bounds as numbers; OpenAPI v3.0 (what the API
    # server speaks) as a boolean flag on minimum/maximum.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(flag), (int, float)) and not isinstance(node.get(flag), bool):
            node[bound] = node.pop(flag)
            node[flag] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "string"

    cel = node.pop(CEL, None)
    if cel:
        node["x-kubernetes-validations"] = cel

    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props:
            node["properties"] = {k: _structural(v) for k, v in props.items()}
            node.pop("additionalProperties", None)
        elif isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = _structural(node["additionalProperties"])
            node.setdefault("maxProperties", MAX_ITEMS)
        elif node.get("additionalProperties") is not False:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
        else:
            node.pop("additionalProperties", None)
    elif kind == "array":
        node.setdefault("maxItems", MAX_ITEMS)
        node["items"] = _structural(node.get("items", {"type": "object", "x-kubernetes-preserve-unknown-fields": True}))
    elif "type" not in node and "properties" in node:
        node["type"] = "object"
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    if node.get("default") is None:
        node.pop("default", None)
    if "default" in node and node.get("type") == "object" and node["default"] == {}:
        node.pop("default")
    return node


def _fill_object_defaults(node: dict[str, Any]) -> None:
    """Give object-valued properties whose children all have defaults a ``{}`` default.

    The API server applies defaults top-down, so ``algorithm: {}`` (or absent) still ends up
    with every nested default — which is what the CEL rules that read those fields need.
    """
    if node.pop(_RAW, False):
        node.pop(_OPTIONAL, None)
        return
    for name, child in (node.get("properties") or {}).items():
        # Optional sections (reward, agent…) stay absent; sections the model always has get {}.
        if child.get("type") == "object" and child.get("properties") and "default" not in child \
                and not child.get("required") and not child.get(_OPTIONAL):
            child["default"] = {}
    for child in (node.get("properties") or {}).values():
        _fill_object_defaults(child)
    if isinstance(node.get("items"), dict):
        _fill_object_defaults(node["items"])
    node.pop(_OPTIONAL, None)


def spec_schema() -> dict[str, Any]:
    raw = RLHFJobSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    resolved = _resolve(raw, defs)
    schema = _structural(resolved)
    _fill_object_defaults(schema)
    # `default_factory` fields carry no default in pydantic's schema; the model's own
    # defaults for whole sub-objects (algorithm, rollout…) come from _fill_object_defaults.
    return schema


def status_schema() -> dict[str, Any]:
    raw = RLHFJobStatus.model_json_schema(by_alias=True, mode="serialization")
    defs = raw.pop("$defs", {})
    schema = _structural(_resolve(raw, defs))
    _drop_defaults(schema)  # the API server would fill them into every status it returns
    schema["x-kubernetes-preserve-unknown-fields"] = True  # _structural drops it with additionalProperties
    return schema


def _drop_defaults(node: dict[str, Any]) -> None:
    node.pop("default", None)
    node.pop(_OPTIONAL, None)
    for child in (node.get("properties") or {}).values():
        _drop_defaults(child)
    if isinstance(node.get("items"), dict):
        _drop_defaults(node["items"])


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.progress.totalSteps", "priority": 1},
    {"name": "Reward", "type": "number", "jsonPath": ".status.progress.rewardMean"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName", "priority": 1},
    {"name": "Dashboard", "type": "string", "jsonPath": ".status.dashboardURL", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{s.PLURAL}.{s.GROUP}",
            "labels": {"app.kubernetes.io/name": "rlhf-operator", "app.kubernetes.io/part-of": "rlhf-operator"},
        },
        "spec": {
            "group": s.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": s.KIND,
                "listKind": f"{s.KIND}List",
                "plural": s.PLURAL,
                "singular": s.SINGULAR,
                "shortNames": list(s.SHORT_NAMES),
                "categories": ["all", "rlhf"],
            },
            "versions": [{
                "name": s.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "RLHFJob runs RLHF / RL post-training of a language model on a KubeRay cluster.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }


HEADER = "# Generated from rlhf_api.spec by `rlhf crd`. Do not edit by hand.\n"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    return HEADER + yaml.dump(crd(), Dumper=_NoAliases, sort_keys=False, width=120)


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Violations of Kubernetes' structural-schema rules (a subset the API server enforces)."""
    problems = []
    for key in schema:
        if key in _STRUCTURAL_FORBIDDEN:
            problems.append(f"{path or '/'}: '{key}' is not allowed in a structural schema")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    int_or_string = schema.get("x-kubernetes-int-or-string")
    if "type" not in schema and not preserve and not int_or_string:
        problems.append(f"{path or '/'}: every node needs a type (or x-kubernetes-preserve-unknown-fields / int-or-string)")
    if "anyOf" in schema and not int_or_string:
        for branch in schema["anyOf"]:
            if set(branch) & {"type", "description", "default", "nullable"}:
                problems.append(f"{path}: anyOf branches may not set type/description/default")
    for name, child in (schema.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}{{}}")
    if schema.get("properties") and isinstance(schema.get("additionalProperties"), dict):
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    return problems
