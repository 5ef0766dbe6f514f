"""What the API server or KubeRay would refuse in the rendered objects, found before any is created.

Pure: rendered manifests in, one line per problem out (empty when everything would be accepted).
``launch`` calls :func:`preflight` on what ``render`` returns and, on any problem, creates nothing
and fails the job with these lines; ``rlhf render``/``rlhf validate`` can print them the same way.
Checked: each object's size against the API server's limits, the RayJob against KubeRay's RayJob
schema (structural OpenAPI; its CEL rules concern fields the operator does not render), and the
labels and annotations of every object and pod template.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from rlhf_api.k8s import check_annotations, check_labels
from rlhf_api.openapi import validate

from .kuberay_schema import rayjob_schema

# The API server refuses a request body over 3 MiB, and a ConfigMap's data and binaryData together
# over 1 MiB ("Too long: must have at most 1048576 bytes").
MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_CONFIGMAP_BYTES = 1024 * 1024


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', 'object')} {(obj.get('metadata') or {}).get('name', '?')}"


def _mib(size: int) -> str:
    return f"{size} bytes ({size / 1024 / 1024:.2f} MiB)"


def size_problems(obj: dict[str, Any]) -> list[str]:
    """The request the create would send, and a ConfigMap's data, against the API server's limits."""
    problems = []
    request = len(json.dumps(obj, separators=(",", ":")).encode())
    if request > MAX_REQUEST_BYTES:
        problems.append(f"{_name(obj)}: Too long: the object is {_mib(request)} and the API server accepts a request"
                        f" of at most {_mib(MAX_REQUEST_BYTES)}; make the inline code or spec smaller")
    if obj.get("kind") == "ConfigMap":
        data = sum(len(k.encode()) + len(v.encode()) for k, v in (obj.get("data") or {}).items())
        data += sum(len(k.encode()) + len(v.encode()) for k, v in (obj.get("binaryData") or {}).items())
        if data > MAX_CONFIGMAP_BYTES:
            problems.append(f"{_name(obj)}: data: Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes; it has"
                            f" {_mib(data)}: keep the reward/agent code under 1 MiB in all, or give it by path")
    return problems


def _metadata_problems(where: str, metadata: Optional[dict[str, Any]]) -> list[str]:
    problems = []
    for field, check in (("labels", check_labels), ("annotations", check_annotations)):
        try:
            check((metadata or {}).get(field) or {})
        except ValueError as exc:
            problems.append(f"{where + '.' if where else ''}metadata.{field}: {exc}")
    return problems


def _templates(rayjob: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    spec = rayjob.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or {}
    yield "spec.rayClusterSpec.headGroupSpec.template", (cluster.get("headGroupSpec") or {}).get("template") or {}
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        yield f"spec.rayClusterSpec.workerGroupSpecs[{i}].template", group.get("template") or {}
    if spec.get("submitterPodTemplate"):
        yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]


def rayjob_problems(rayjob: dict[str, Any]) -> list[str]:
    """The RayJob against KubeRay's schema, unknown fields refused as kubectl's strict validation does."""
    body = {k: v for k, v in rayjob.items() if k != "metadata"}
    problems = [f"{_name(rayjob)}: {p}" for p in validate(rayjob_schema(), body, "")]
    for where, template in _templates(rayjob):
        problems += [f"{_name(rayjob)}: {p}" for p in _metadata_problems(where, template.get("metadata"))]
    return problems


def preflight(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Every reason the API server or KubeRay would refuse one of ``objects`` (render's output)."""
    problems: list[str] = []
    for obj in objects:
        problems += size_problems(obj)
        problems += [f"{_name(obj)}: {p}" for p in _metadata_problems("", obj.get("metadata"))]
        if obj.get("apiVersion") == "ray.io/v1" and obj.get("kind") == "RayJob":
            problems += rayjob_problems(obj)
    return problems
