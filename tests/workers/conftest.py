"""Worker end-to-end tests: every metrics.jsonl a test's run writes has only documented keys."""

import json

import pytest

from support.metricsdoc import undocumented_keys


@pytest.fixture(autouse=True)
def metrics_keys_are_documented(request, tmp_path):
    yield
    keys: set[str] = set()
    for path in tmp_path.rglob("metrics.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                keys |= set(json.loads(line))
    missing = undocumented_keys(keys)
    assert not missing, f"metrics.jsonl keys without a row in docs/metrics.md: {sorted(missing)}"
