"""The operator's /metrics, scraped over HTTP while a job runs and parsed with Prometheus' own
text parser (prometheus_client.parser): process and Python metrics, jobs by phase, handler
latency, API errors by verb and code, and the per-job gauges from the driver's progress report,
which leave the scrape when the job is deleted."""

import urllib.request
from datetime import datetime, timedelta, timezone

from prometheus_client.parser import text_string_to_metric_families

from support.operator_env import JOBS, NS, RAYJOBS, free_port, kuberay, rlhfjob

JOB = {"namespace": NS, "rlhfjob": "demo"}


def beat(seconds_ago: float = 0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def scrape(port: int) -> dict[str, object]:
    """name -> the family, as Prometheus' parser reads the page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, name: str, sample: str = "", **labels: str):
    """The value of the one sample of family ``name`` (sample name ``name + sample``) with ``labels``; None if absent."""
    family = families.get(name)
    found = [s.value for s in (family.samples if family else [])
             if s.name == name + sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def test_metrics_follow_a_running_job_and_forget_it_when_deleted(kube, operator, progress_server):
    port = free_port()
    # One create of the RayJob fails with a 500 (retried): counted as an API error.
    kube.faults.add("status", "POST", r"/rayjobs$", code=500, count=1)
    operator.start(health_port=port, progress_url=progress_server.url, stall_seconds=3, api_retry_seconds=0.2)
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS), timeout=15)
    progress_server.report = {"state": "training", "step": 7, "totalSteps": 20, "rewardMean": 0.42, "scoreMean": 0.5,
                              "kl": 0.013, "rewardErrorRate": 0.25, "heartbeat": beat()}
    kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-abc",
            dashboardURL="demo-abc-head-svc.team-a.svc:8265")

    families = kube.wait_for(lambda: (lambda f: f if value(f, "rlhf_job_step", **JOB) == 7 else None)(scrape(port)))
    # prometheus-client's own collectors: the process and the interpreter.
    assert value(families, "process_cpu_seconds", "_total") is not None
    assert value(families, "python_info") == 1
    assert families["rlhf_jobs"].type == "gauge"
    assert value(families, "rlhf_jobs", phase="Running") == 1 and value(families, "rlhf_jobs", phase="Failed") == 0
    assert value(families, "rlhf_job_phase", phase="Running", **JOB) == 1
    # The job's RayJob and Ray cluster, and the dashboard URL KubeRay reported, for the dashboard's table.
    assert value(families, "rlhf_job_info", rayjob="demo", ray_cluster="demo-abc",
                 dashboard_url="demo-abc-head-svc.team-a.svc:8265", **JOB) == 1
    assert value(families, "rlhf_job_total_steps", **JOB) == 20
    assert value(families, "rlhf_job_reward_mean", **JOB) == 0.42
    assert value(families, "rlhf_job_score_mean", **JOB) == 0.5
    assert value(families, "rlhf_job_kl", **JOB) == 0.013
    assert value(families, "rlhf_job_reward_error_rate", **JOB) == 0.25
    assert 0 <= value(families, "rlhf_job_heartbeat_age_seconds", **JOB) < 60
    assert value(families, "rlhf_job_stalled", **JOB) == 0
    assert value(families, "rlhf_job_reward_faults", **JOB) == 0
    # Handler latency, per handler: launch ran twice (the 500, then the create).
    assert families["rlhf_reconcile_duration_seconds"].type == "histogram"
    assert value(families, "rlhf_reconcile_duration_seconds", "_count", handler="launch") >= 2
    assert value(families, "rlhf_reconcile_duration_seconds", "_count", handler="rayjob_changed") >= 1
    assert families["rlhf_api_errors"].type == "counter"
    assert value(families, "rlhf_api_errors", "_total", verb="create", code="500") == 1
    assert value(families, "rlhf_rayjobs_created", "_total") == 1
    assert value(families, "rlhf_progress_polls", "_total") >= 1

    # The driver stops beating: past stallSeconds the job is Stalled, and the gauge says so.
    families = kube.wait_for(lambda: (lambda f: f if value(f, "rlhf_job_stalled", **JOB) == 1 else None)(scrape(port)),
                             timeout=15)
    assert value(families, "rlhf_job_heartbeat_age_seconds", **JOB) >= 3

    kube.delete(JOBS, "demo", NS)

    def forgotten():
        f = scrape(port)
        left = [s for family in f.values() for s in family.samples if s.labels.get("rlhfjob") == "demo"]
        return f if not left else None
    families = kube.wait_for(forgotten, timeout=10)
    assert value(families, "rlhf_jobs", phase="Running") == 0
