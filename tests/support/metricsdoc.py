"""docs/metrics.md's tables, as the tests read them: the keys of metrics.jsonl (``<name>`` a
family) and the operator's Prometheus series."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _table(heading: str) -> list[str]:
    section = DOC.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def jsonl_patterns() -> list[re.Pattern[str]]:
    return [re.compile("^" + re.sub(r"<[a-z_]+>", "[^/]+", re.escape(k).replace(r"\<", "<").replace(r"\>", ">")) + "$")
            for k in _table("## `metrics.jsonl`")]


def undocumented_keys(keys: set[str]) -> set[str]:
    patterns = jsonl_patterns()
    return {k for k in keys if not any(p.match(k) for p in patterns)}


def prometheus_series() -> set[str]:
    return set(_table("## Prometheus"))
