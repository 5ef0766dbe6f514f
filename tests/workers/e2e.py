"""Helpers shared by the end-to-end worker tests: the quickstart files and reading metrics.

The job documents come from :mod:`support.jobs` (``runnable_spec``, ``merge``, ``write_job``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


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
