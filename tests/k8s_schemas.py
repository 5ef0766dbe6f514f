"""Validating rendered objects against real schemas: CRD openAPIV3 schemas and core kinds."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DATA = Path(__file__).parent / "data"
KUBERAY_RAYJOB_CRD = DATA / "kuberay" / "ray.io_rayjobs.yaml"
K8S_VERSION = "1.33.0"


@lru_cache(maxsize=None)
def crd_schema(path: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(Path(path).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def _strict(schema: Any) -> Any:
    """Unknown fields are errors (kubectl --validate=strict), except where the schema preserves them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_errors(obj: dict[str, Any], crd_path: Path | str, version: str) -> list[str]:
    schema = copy.deepcopy(crd_schema(str(crd_path), version))
    schema["properties"]["metadata"] = {"type": "object"}
    validator = jsonschema.Draft7Validator(_strict(schema))
    return [f"{'.'.join(map(str, e.absolute_path)) or '/'}: {e.message}" for e in validator.iter_errors(obj)]


def rayjob_errors(obj: dict[str, Any]) -> list[str]:
    return crd_errors(obj, KUBERAY_RAYJOB_CRD, "v1")


def core_errors(obj: dict[str, Any]) -> list[str]:
    """Validate a core Kubernetes object with kubernetes-validate (strict: unknown fields fail)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def pod_from_template(template: dict[str, Any], name: str = "pod") -> dict[str, Any]:
    meta = dict(template.get("metadata") or {})
    meta["name"] = name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}
