"""The operator's metrics registry, used from many threads at once as kopf's handler threads do."""

import threading

from prometheus_client.parser import text_string_to_metric_families

from rlhf_api.progress import ProgressReport
from rlhf_operator.metrics import Metrics


def test_counts_and_job_series_stay_exact_under_concurrent_writers_and_scrapes():
    metrics, errors = Metrics(), []

    def writer(worker: int) -> None:
        try:
            for i in range(200):
                metrics.rayjobs_created_total.inc()
                metrics.api_error("PATCH", 409)
                metrics.note_job("ns", f"job-{worker}-{i}", {"phase": "Running"})
                metrics.note_report("ns", f"job-{worker}-{i}", ProgressReport(step=i, reward_mean=0.5))
                if i % 2:
                    metrics.forget("ns", f"job-{worker}-{i}")
        except Exception as exc:  # noqa: BLE001  (surfaced below)
            errors.append(exc)

    def scraper() -> None:
        try:
            for _ in range(8):
                list(text_string_to_metric_families(metrics.render().decode()))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)] + [threading.Thread(target=scraper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert metrics.rayjobs_created == 4 * 200
    [errors_sample] = [s for s in families["rlhf_api_errors"].samples if s.name == "rlhf_api_errors_total"]
    assert errors_sample.labels == {"verb": "patch", "code": "409"} and errors_sample.value == 4 * 200
    running = [s.value for s in families["rlhf_jobs"].samples if s.labels["phase"] == "Running"]
    assert running == [4 * 100]  # the odd ones were forgotten
    assert len(families["rlhf_job_step"].samples) == 4 * 100


def test_timed_handlers_keep_their_kind_and_observe_failures_too():
    import asyncio
    import inspect

    import pytest

    metrics = Metrics()

    def fails(**_):
        raise RuntimeError("boom")

    async def works(**_):
        return 1

    with pytest.raises(RuntimeError):
        metrics.timed("sync", fails)(body={})
    timed = metrics.timed("async", works)
    assert inspect.iscoroutinefunction(timed) and asyncio.run(timed(body={})) == 1
    registry = metrics.registry
    assert registry.get_sample_value("rlhf_reconcile_duration_seconds_count", {"handler": "sync"}) == 1
    assert registry.get_sample_value("rlhf_reconcile_duration_seconds_count", {"handler": "async"}) == 1


def test_conditions_become_gauges_and_a_report_before_any_status_counts_as_running():
    metrics = Metrics()
    metrics.note_job("ns", "faulty", {"phase": "Failed", "reason": "RewardFaults", "conditions": [
        {"type": "RewardFaults", "status": "True"}, {"type": "Stalled", "status": "False"}]})
    metrics.note_report("ns", "early", ProgressReport(step=1, heartbeat="2026-01-01T00:00:00Z"))
    value = metrics.registry.get_sample_value
    assert value("rlhf_job_reward_faults", {"namespace": "ns", "rlhfjob": "faulty"}) == 1
    assert value("rlhf_job_stalled", {"namespace": "ns", "rlhfjob": "faulty"}) == 0
    assert value("rlhf_job_phase", {"namespace": "ns", "rlhfjob": "faulty", "phase": "Failed"}) == 1
    assert value("rlhf_jobs", {"phase": "Running"}) == 1 and value("rlhf_jobs", {"phase": "Failed"}) == 1
    assert value("rlhf_job_heartbeat_age_seconds", {"namespace": "ns", "rlhfjob": "early"}) > 3600
    assert value("rlhf_job_reward_mean", {"namespace": "ns", "rlhfjob": "early"}) is None  # not reported: no series
