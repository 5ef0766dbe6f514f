"""A small validator for Kubernetes structural OpenAPI v3 schemas, in the API server's words.

It checks what a CRD's ``openAPIV3Schema`` (and the core types embedded in one) say about a
value: types, required and unknown fields, enums, patterns, lengths, bounds, int-or-string and
``format: int32/int64``. CEL rules (``x-kubernetes-validations``) are not evaluated here.
Unknown fields are errors, as with kubectl's default strict field validation, except where the
schema preserves them. Messages follow the API server's: ``spec.x: Required value``,
``spec.x: Invalid value: 7: must be of type string``, ``spec.x.y: unknown field "y"``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

_FORMATS = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}
_TYPES = {"string": "string", "boolean": "boolean", "integer": "integer", "number": "number",
          "object": "object", "array": "array"}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def _type_ok(expected: str, value: Any) -> bool:
    actual = _type_of(value)
    return actual == expected or (expected == "number" and actual == "integer")


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _invalid(path: str, value: Any, what: str) -> str:
    return f"{path}: Invalid value: {_shown(value)}: {what}"


def _scalar(node: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    if "enum" in node and value not in node["enum"]:
        supported = ", ".join(_shown(v) for v in node["enum"])
        errors.append(f"{path}: Unsupported value: {_shown(value)}: supported values: {supported}")
    if isinstance(value, str):
        if "maxLength" in node and len(value) > node["maxLength"]:
            errors.append(f"{path}: Too long: may not be more than {node['maxLength']} bytes")
        if "minLength" in node and len(value) < node["minLength"]:
            errors.append(_invalid(path, value, f"should be at least {node['minLength']} chars long"))
        if "pattern" in node and not _regex(node["pattern"]).search(value):
            errors.append(_invalid(path, value, f"should match '{node['pattern']}'"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = _FORMATS.get(node.get("format", ""), (None, None))
        if lo is not None and isinstance(value, int) and not lo <= value <= hi:
            errors.append(_invalid(path, value, f"must be of type {node['format']}"))
        if "minimum" in node:
            if node.get("exclusiveMinimum") and value <= node["minimum"]:
                errors.append(_invalid(path, value, f"should be greater than {node['minimum']}"))
            elif value < node["minimum"]:
                errors.append(_invalid(path, value, f"should be greater than or equal to {node['minimum']}"))
        if "maximum" in node:
            if node.get("exclusiveMaximum") and value >= node["maximum"]:
                errors.append(_invalid(path, value, f"should be less than {node['maximum']}"))
            elif value > node["maximum"]:
                errors.append(_invalid(path, value, f"should be less than or equal to {node['maximum']}"))
    return errors


def _object(node: dict[str, Any], value: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}.{name}: Required value" for name in node.get("required", []) if name not in value]
    props = node.get("properties")
    extra = node.get("additionalProperties")
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        errors.append(f"{path}: Too many: {len(value)}: must have at most {node['maxProperties']} items")
    if "minProperties" in node and len(value) < node["minProperties"]:
        errors.append(_invalid(path, len(value), f"should have at least {node['minProperties']} properties"))
    for key, item in value.items():
        child_path = f"{path}.{key}" if path else str(key)
        if props and key in props:
            errors += validate(props[key], item, child_path)
        elif isinstance(extra, dict):
            errors += validate(extra, item, child_path)
        elif props is not None and not node.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
            errors.append(f'{child_path}: unknown field "{key}"')
        elif props is None and extra is False:
            errors.append(f'{child_path}: unknown field "{key}"')
    return errors


def _array(node: dict[str, Any], value: list[Any], path: str) -> list[str]:
    errors = []
    if "maxItems" in node and len(value) > node["maxItems"]:
        errors.append(f"{path}: Too many: {len(value)}: must have at most {node['maxItems']} items")
    if "minItems" in node and len(value) < node["minItems"]:
        errors.append(_invalid(path, len(value), f"should have at least {node['minItems']} items"))
    items = node.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            errors += validate(items, item, f"{path}[{i}]")
    if node.get("x-kubernetes-list-type") == "set":
        seen: list[Any] = []
        for i, item in enumerate(value):
            if item in seen:
                errors.append(f"{path}[{i}]: Duplicate value: {_shown(item)}")
            seen.append(item)
    return errors


def validate(node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Every way ``value`` breaks the structural schema ``node``; ``path`` names it in messages."""
    if value is None:
        return [] if node.get("nullable") else [_invalid(path, "null", f"must be of type {node.get('type', 'object')}")]
    if node.get("x-kubernetes-int-or-string"):
        if _type_of(value) not in ("integer", "string"):
            return [_invalid(path, value, "must be of type integer or string")]
        return _scalar(node, value, path)
    expected = node.get("type")
    if expected in _TYPES and not _type_ok(expected, value):
        return [_invalid(path, value, f"must be of type {expected}")]
    if isinstance(value, dict):
        return _object(node, value, path)
    if isinstance(value, list):
        return _array(node, value, path)
    return _scalar(node, value, path)
