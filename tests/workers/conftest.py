"""Worker end-to-end tests: a Ray instance and a tiny model per test module, and every
metrics.jsonl a test's run writes has only documented keys."""

import json

import pytest

from support.metricsdoc import undocumented_keys


@pytest.fixture(autouse=True)
def metrics_keys_are_documented(request, tmp_path):
    """After each end-to-end (slow) test: the rows its runs wrote (unit tests write made-up rows)."""
    yield
    if request.node.get_closest_marker("slow") is None:
        return
    keys: set[str] = set()
    for path in tmp_path.rglob("metrics.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                keys |= set(json.loads(line))
    missing = undocumented_keys(keys)
    assert not missing, f"metrics.jsonl keys without a row in docs/metrics.md: {sorted(missing)}"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for the module's tests (8 logical CPUs: room for engines, trainers and rewards)."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rlhf_workers.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
