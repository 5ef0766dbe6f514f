"""`rlhf operator` as a process, as its pod runs it: the cluster named by --kubeconfig, kopf's JSON
logs, every request (kopf's own and the kubernetes client's) sent as `rlhf-operator/<version>`,
every write of the client naming `rlhf-operator` as its field manager, and /metrics scraped over
HTTP; settings that do not parse and a missing cluster end it at once with one line."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from support.operator_env import NS, RAYJOBS, free_port, rlhfjob

RLHF = [str(Path(sys.executable).parent / "rlhf"), "operator"]  # the console script, as the image runs it


def clean_env(tmp_path, **extra: str) -> dict[str, str]:
    """The test process's environment without any kubeconfig or RLHF_* setting of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_") and k != "KUBECONFIG"}
    return {**env, "HOME": str(tmp_path), **extra}


def test_operator_process_names_itself_on_every_request_and_serves_metrics(kube, tmp_path):
    kube.create_namespace(NS)
    port = free_port()
    env = clean_env(tmp_path, RLHF_HEALTH_PORT=str(port), RLHF_LOG_FORMAT="json",
                    RLHF_WORKER_IMAGE="example/workers:test",
                    RLHF_PREFLIGHT_PODS="false")  # the emulator runs no pods (test_codecheck plays the kubelet)
    before = len(kube.requests)
    process = subprocess.Popen([*RLHF, "--kubeconfig", kube.kubeconfig_path, "-n", NS], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kube.create(rlhfjob())
        assert kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS), timeout=30)

        def scraped():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return None
            samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            return samples if samples.get("rlhf_rayjobs_created_total") == 1 else None
        samples = kube.wait_for(scraped, timeout=15)
        assert samples["process_resident_memory_bytes"] > 0
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output

    requests = kube.requests[before:]
    agents = {r.headers.get("User-Agent", "") for r in requests}
    assert agents and all(a.startswith("rlhf-operator/") for a in agents), agents
    # Both clients were heard: kopf's watches and the kubernetes client's create of the RayJob.
    assert any(r.method == "GET" and r.params.get("watch") for r in requests)
    [create] = [r for r in requests if r.method == "POST" and r.url.path.endswith("/rayjobs")]
    assert create.params.get("fieldManager") == "rlhf-operator"
    client_writes = [r for r in requests if r.method in ("POST", "PATCH", "PUT") and "fieldManager" in r.params]
    assert client_writes and {r.params["fieldManager"] for r in client_writes} == {"rlhf-operator"}
    # kopf's JSON log format: one object a line.
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert logged and all("message" in entry for entry in logged), output[-2000:]


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path):
    for env, says in (({"RLHF_STALL_SECONDS": "10m"}, "RLHF_STALL_SECONDS='10m' is not valid"),
                      ({"RLHF_STAL_SECONDS": "60"}, "did you mean RLHF_STALL_SECONDS?")):
        done = subprocess.run(RLHF, env=clean_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_no_cluster_is_one_line_and_exit_1(tmp_path):
    done = subprocess.run(RLHF, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("rlhf operator: no cluster to connect to: not in a pod")
    assert done.stderr.count("\n") == 1 and "--kubeconfig" in done.stderr
