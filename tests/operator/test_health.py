"""The operator pod's /healthz and /metrics, served while the operator runs."""

import urllib.request

from support.operator_env import NS, free_port, rlhfjob


def test_healthz_and_metrics_count_jobs_by_phase(kube, operator):
    port = free_port()
    operator.start(health_port=port)
    kube.create(rlhfjob())
    kube.wait_for(lambda: kube.get("ray.io/v1/rayjobs", "demo", NS))
    base = f"http://127.0.0.1:{port}"
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).read() == b"ok\n"

    def metrics():
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        return text if "rlhf_rayjobs_created_total 1" in text else None
    text = kube.wait_for(metrics)
    assert 'rlhf_jobs{phase="Pending"} 1' in text
    assert "# TYPE rlhf_progress_polls_total counter" in text


def test_a_taken_health_port_does_not_stop_the_operator(kube, operator):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        operator.start(health_port=taken.getsockname()[1])
        kube.create(rlhfjob())
        assert kube.wait_for(lambda: kube.get("ray.io/v1/rayjobs", "demo", NS), timeout=15)
