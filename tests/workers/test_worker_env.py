"""Every worker process gets OpenMP threads that sleep when idle (OMP_WAIT_POLICY=PASSIVE) and the
thread count it was given; a job's cluster.env may still choose its own policy.

Why PASSIVE: on shared cores a spinning OpenMP thread burns the slice its partner needs (measured in
bench/README.md, bench_vs_trl: one colocated generate at the ~25M size took 10-12 s of CPU spinning
and 1.4 s passive). How much faster is a benchmark's question; here, only that the setting arrives.
"""

from __future__ import annotations

import pytest

from support.jobs import merge, runnable_spec
from e2e import QUICKSTART


def _spec(model, **over):
    from rlhf_api.spec import RLHFJobSpec

    return RLHFJobSpec.model_validate(merge(runnable_spec(model, QUICKSTART / "prompts.jsonl",
                                                         QUICKSTART / "reward_func.py"), over))


def test_worker_env_sleeps_openmp_threads_sets_the_thread_count_and_lets_the_job_override(tmp_path):
    from rlhf_workers.cluster import worker_env

    env = worker_env(_spec(tmp_path / "model"), threads=3)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in worker_env(_spec(tmp_path / "model"), threads=None)  # Ray's own default then

    own = worker_env(_spec(tmp_path / "model", cluster={"env": [
        {"name": "OMP_WAIT_POLICY", "value": "ACTIVE"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}), threads=2)
    assert own["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "FROM_SECRET" not in own  # no value here: never blanked


@pytest.mark.slow
def test_colocated_worker_process_runs_with_passive_openmp_and_its_threads(ray_cluster, tiny):
    from rlhf_workers.cluster import Cluster

    spec = _spec(tiny, rollout={"backend": "transformers"}, cluster={"placement": "colocated"})
    cluster = Cluster.start(spec, placement="colocated", reward=None, total_optimizer_steps=1, max_model_len=128,
                            threads=2)
    try:
        (info,) = cluster.setup_info
        assert info["roles"] == ["engine", "policy"]
        assert info["omp_wait_policy"] == "PASSIVE"
        assert info["threads"] == 2
    finally:
        cluster.shutdown()
