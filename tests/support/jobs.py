"""
RLHFJob documents for tests: one builder for every tier.

* :func:`rlhfjob` wraps a spec in an ``RLHFJob`` document (name, namespace, labels).
* :func:`minimal_spec` / :func:`job` — the smallest valid spec (a zero reward, inline), with
  overrides by path: ``job(data__labelKey="answer", reward=None)`` sets ``spec.data.labelKey``
  and drops ``spec.reward``. Enough to validate, render and launch; nothing runs it.
* :func:`runnable_spec` — a spec the real workers run on a CPU in seconds (a tiny local model,
  transformers rollouts, one ZeRO-0 trainer, two steps); :func:`merge` layers a test's changes
  on it and :func:`write_job` writes the document where ``rlhf run`` reads it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "rlhf.dev/v1alpha1"
KIND = "RLHFJob"
NAME = "demo"
NAMESPACE = "team-a"

REWARD_SOURCE = "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"

MINIMAL_SPEC: dict[str, Any] = {
    "model": {"path": "/models/tiny"},
    "data": {"prompts": "/data/prompts.jsonl"},
    "reward": {"function": {"inline": REWARD_SOURCE}},
}


def rlhfjob(
        spec: dict[str, Any] | None = None,
        *,
        name: str = NAME,
        namespace: str | None = NAMESPACE,
        labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """
    An RLHFJob document around a copy of ``spec`` (:data:`MINIMAL_SPEC` if none).
    ``namespace=None`` leaves the namespace out (as a file for ``rlhf run``);
    ``labels`` are written only when given (``{}`` writes an empty map).
    """
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels is not None:
        metadata["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
            "spec": copy.deepcopy(MINIMAL_SPEC if spec is None else spec)}


def override(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """
    A copy of ``spec`` with ``changes`` set by path: ``a__b=v`` sets ``spec["a"]["b"]``
    (creating ``spec["a"]`` if needed), and ``None`` removes the key.
    """
    out = copy.deepcopy(spec)
    for dotted, value in changes.items():
        node = out
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return out


def minimal_spec(**changes: Any) -> dict[str, Any]:
    """:data:`MINIMAL_SPEC` with :func:`override`'s changes."""
    return override(MINIMAL_SPEC, **changes)


def job(**changes: Any) -> dict[str, Any]:
    """The minimal job ``demo`` in ``team-a``, with :func:`override`'s changes to its spec."""
    return rlhfjob(minimal_spec(**changes))


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A deep merge: mappings in ``extra`` merge into ``base``'s, anything else replaces. Copies both."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def runnable_spec(model: Path, prompts: Path, reward: Path) -> dict[str, Any]:
    """A small job: transformers rollouts, one ZeRO-0 trainer, colocated, 2 steps."""
    return {
        "model": {"path": str(model)},
        "data": {"prompts": str(prompts), "inputKey": "prompt", "labelKey": "target"},
        "reward": {"function": {"path": str(reward)}},
        "algorithm": {"advantageEstimator": "group_norm", "nSamplesPerPrompt": 2},
        "rollout": {"backend": "transformers", "maxNewTokens": 8, "promptMaxLen": 64},
        "training": {"maxSteps": 2, "rolloutBatchSize": 4, "trainBatchSize": 8, "microBatchSize": 4,
                     "learningRate": 1e-3, "warmupRatio": 0.0, "zeroStage": 0, "trainers": 1, "bf16": False},
        "checkpoint": {"saveSteps": -1},
        "cluster": {"placement": "colocated"},
    }


def write_job(directory: Path, spec: dict[str, Any], name: str = "e2e") -> Path:
    """Write ``<directory>/<name>.yaml``: the job ``name`` (no namespace) with ``spec``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(rlhfjob(spec, name=name, namespace=None), sort_keys=False))
    return path
