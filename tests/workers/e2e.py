"""Helpers shared by the end-to-end worker tests: job files, running them, reading metrics."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_spec(model: Path, prompts: Path, reward: Path) -> dict[str, Any]:
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


def write_job(directory: Path, spec: dict, name: str = "e2e") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    doc = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def copy_quickstart(directory: Path) -> Path:
    """examples/quickstart.yaml and its files, copied (so the test creates its own tiny model)."""
    shutil.copy(ROOT / "examples" / "quickstart.yaml", directory / "quickstart.yaml")
    target = directory / "quickstart"
    target.mkdir()
    for name in ("prompts.jsonl", "reward_func.py"):
        shutil.copy(QUICKSTART / name, target / name)
    return directory / "quickstart.yaml"


def metrics(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
