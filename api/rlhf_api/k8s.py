"""What the Kubernetes API server checks on the parts of a spec that end up in pods, checked first.

Label and annotation keys and values, nodeSelector entries, extended resource names, volume
sources (validated as the core types they are) and the JSON the API server can decode at all.
Messages use the API server's own words, so that `rlhf validate` says what `kubectl apply` would.
Each check also has a form the generated CRD carries (a pattern or a CEL rule), so that the API
server refuses the same specs when the webhook is not installed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .k8s_volumes import VOLUME_SOURCE_SCHEMAS
from .openapi import validate

# k8s.io/apimachinery/pkg/util/validation
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_VALUE = rf"({_NAME_PART})?"
QUALIFIED_NAME = rf"^({_DNS1123_SUBDOMAIN}/)?{_NAME_PART}$"
LABEL_VALUE = rf"^{_LABEL_VALUE}$"
# An extended resource: a domain prefix outside kubernetes.io, a '/', and a name part of at most 63
# (IsExtendedResourceName); written for Go's RE2 too, which the CRD's pattern runs on.
EXTENDED_RESOURCE = rf"^{_DNS1123_SUBDOMAIN}/([A-Za-z0-9][-A-Za-z0-9_.]{{0,61}})?[A-Za-z0-9]$"
EXTENDED_RESOURCE_CEL = "!self.contains('kubernetes.io/') && !self.startsWith('requests.')"
ANNOTATIONS_MAX_BYTES = 256 * 1024  # TotalAnnotationSizeLimitB

NAME_PART_MESSAGE = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with"
                     " an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for"
                     f" validation is '{_NAME_PART}')")
PREFIX_MESSAGE = ("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-'"
                  " or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used"
                  f" for validation is '{_DNS1123_SUBDOMAIN}')")
LABEL_VALUE_MESSAGE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.',"
                       " and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or"
                       f" '12345', regex used for validation is '{_LABEL_VALUE}')")


def qualified_name_problems(key: str) -> list[str]:
    """IsQualifiedName: an optional DNS subdomain prefix and '/', then a name part of at most 63."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name " + NAME_PART_MESSAGE.removeprefix("name part ") + " with an optional DNS subdomain"
                " prefix and '/' (e.g. 'example.com/MyName')"]
    problems = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif len(prefix) > 253:
            problems.append("prefix part must be no more than 253 characters")
        elif not re.fullmatch(_DNS1123_SUBDOMAIN, prefix):
            problems.append(PREFIX_MESSAGE)
    name = parts[-1]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not re.fullmatch(_NAME_PART, name):
        problems.append(NAME_PART_MESSAGE)
    return problems


def label_value_problems(value: str) -> list[str]:
    if len(value) > 63:
        return ["must be no more than 63 characters"]
    return [] if re.fullmatch(_LABEL_VALUE, value) else [LABEL_VALUE_MESSAGE]


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """ValidateLabels: for pod labels and nodeSelector entries alike."""
    for key, value in labels.items():
        for problem in qualified_name_problems(key):
            raise ValueError(f"Invalid value: {key!r}: {problem}")
        for problem in label_value_problems(value):
            raise ValueError(f"Invalid value: {value!r}: {problem} (the value of {key!r})")
    return labels


def check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    """ValidateAnnotations: qualified-name keys (case-insensitive) and 256 KiB in all."""
    for key in annotations:
        for problem in qualified_name_problems(key.lower()):
            raise ValueError(f"Invalid value: {key!r}: {problem}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        raise ValueError(f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes (these have {size})")
    return annotations


def check_extended_resource(name: str) -> str:
    if not re.search(EXTENDED_RESOURCE, name) or "kubernetes.io/" in name or name.startswith("requests."):
        raise ValueError(f"Invalid value: {name!r}: must be an extended resource name such as nvidia.com/gpu or"
                         " amd.com/gpu (a domain outside kubernetes.io, '/', a name), not a standard resource such"
                         " as cpu or memory")
    return name


DNS1123_SUBDOMAIN = rf"^{_DNS1123_SUBDOMAIN}$"
CONFIG_MAP_KEY = r"^[-._a-zA-Z0-9]+$"
SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.',"
                     " and must start and end with an alphanumeric character (e.g. 'example.com', regex used for"
                     f" validation is '{_DNS1123_SUBDOMAIN}')")
CONFIG_MAP_KEY_MESSAGE = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g."
                          " 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is"
                          " '[-._a-zA-Z0-9]+')")


def object_name_problems(name: str) -> list[str]:
    """NameIsDNSSubdomain: how the API server checks the name of a Secret, ConfigMap or ServiceAccount
    that a pod refers to (ValidateSecretName, ValidateConfigMapName, ValidateServiceAccountName)."""
    if len(name) > 253:
        return ["must be no more than 253 characters"]
    return [] if re.fullmatch(_DNS1123_SUBDOMAIN, name) else [SUBDOMAIN_MESSAGE]


def config_map_key_problems(key: str) -> list[str]:
    """IsConfigMapKey: the key of a Secret or ConfigMap a secretKeyRef/configMapKeyRef selects."""
    problems = []
    if len(key) > 253:
        problems.append("must be no more than 253 characters")
    if not re.fullmatch(CONFIG_MAP_KEY[1:-1], key):
        problems.append(CONFIG_MAP_KEY_MESSAGE)
    if key == ".":
        problems.append("must not be '.'")
    elif key == "..":
        problems.append("must not be '..'")
    elif key.startswith(".."):
        problems.append("must not start with '..'")
    return problems


def volume_source_problems(source: dict[str, Any]) -> list[str]:
    """The one source's fields against the API server's schema of that source type (paths are relative)."""
    (kind, body), = source.items()
    return validate(VOLUME_SOURCE_SCHEMAS[kind], body, kind)


# --------------------------------------------------------------------------- decoding

INT64 = (-2**63, 2**63 - 1)


def _decode_problem(value: Any, path: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}: must be a finite number: JSON, and so the API server, has no NaN or infinity (got {value})"
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return (f"{path}: must be an integer from {INT64[0]} to {INT64[1]} (int64), the integers the API server"
                f" stores (got {value})")
    return None


def as_the_api_server_decodes(value: Any, path: str = "") -> Any:
    """``value`` as the API server stores it: nulls in mappings dropped (a null field is an unset
    one), whole numbers written as floats (1.0) read as integers, as kubectl sends them; ValueError
    naming the path for what it cannot decode (NaN, ±inf, integers beyond int64)."""
    if isinstance(value, dict):
        return {k: as_the_api_server_decodes(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()
                if v is not None}
    if isinstance(value, list):
        return [as_the_api_server_decodes(v, f"{path}[{i}]") for i, v in enumerate(value)]
    problem = _decode_problem(value, path or "(value)")
    if problem:
        raise ValueError(problem)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21 and INT64[0] <= value <= INT64[1]:
        return int(value)  # Go's JSON encoder writes 1.0 as 1, and the API server reads an int64 back
    return value
