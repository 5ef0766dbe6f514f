"""End to end as a user sees it: `kopf run -m rlhf_operator.main` (kopf.testing.KopfRunner),
the generated CRD and an example job applied with the real kubectl, status read back with kubectl."""

import shutil
import sys
from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from support.operator_env import NS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kubectl, pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")]


@pytest.fixture
def main_module_env(kube, monkeypatch):
    """`rlhf_operator.main` reads its settings from the environment when imported, as in its pod."""
    kube.create_namespace(NS)
    monkeypatch.setenv("RLHF_KUBECONFIG", kube.kubeconfig_path)
    monkeypatch.setenv("RLHF_HEALTH_PORT", "0")
    monkeypatch.setenv("RLHF_WORKER_IMAGE", "example/workers:e2e")
    # No webhook here, and the examples name Secrets (W&B key, reward token): allowed explicitly.
    monkeypatch.setenv("RLHF_ALLOW_SECRET_REFERENCES", "true")
    monkeypatch.setenv("RLHF_PREFLIGHT_PODS", "false")  # the emulator runs no pods (test_codecheck plays the kubelet)
    import kopf

    # A clean default registry for `-m rlhf_operator.main`, with the login a real deployment uses.
    saved = kopf.get_default_registry()
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.set_default_registry(registry)
    sys.modules.pop("rlhf_operator.main", None)
    yield
    sys.modules.pop("rlhf_operator.main", None)
    kopf.set_default_registry(saved)


def test_kubectl_apply_get_delete_through_kopf_run(kube, main_module_env, tmp_path):
    kube.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml"))
    args = ["run", "-m", "rlhf_operator.main", "--standalone", "--namespace", NS]
    with KopfRunner(args, timeout=60) as runner:
        kube.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples" / "math-gsm8k" / "job.yaml"), namespace=NS)
        rayjob = kube.wait_for(lambda: kube.get("ray.io/v1/rayjobs", "math-gsm8k", NS), timeout=20)
        # The job sets no image: the operator's configured default (RLHF_WORKER_IMAGE) applies.
        assert rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == \
            "example/workers:e2e"
        kube.patch_status("ray.io/v1/rayjobs", "math-gsm8k", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, NS)

        def phase():
            out = kube.kubectl("get", "rlhf", "math-gsm8k", "-o", "jsonpath={.status.phase}", namespace=NS).stdout
            return out if out == "Running" else None
        assert kube.wait_for(phase, timeout=20) == "Running"
        listed = kube.kubectl("get", "rlhfjobs", "-o", "name", namespace=NS).stdout.split()
        assert listed == ["rlhfjob.rlhf.dev/math-gsm8k"]
        kube.kubectl("delete", "rlhf", "math-gsm8k", namespace=NS)
        kube.wait_for(lambda: kube.get("rlhf.dev/v1alpha1/rlhfjobs", "math-gsm8k", NS) is None)
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def test_kubectl_configmap_reward_and_describe_events(kube, main_module_env):
    reward = ROOT / "examples" / "code-exec" / "reward_func.py"
    manifest = kube.kubectl("create", "configmap", "code-reward", f"--from-file={reward}", "--dry-run=client", "-o", "yaml",
                            namespace=NS).stdout
    kube.kubectl("apply", "--validate=false", "-f", "-", input=manifest, namespace=NS)
    with KopfRunner(["run", "-m", "rlhf_operator.main", "--standalone", "--namespace", NS], timeout=60) as runner:
        kube.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples" / "code-exec" / "job.yaml"), namespace=NS)
        status = kube.wait_for(lambda: (kube.get("rlhf.dev/v1alpha1/rlhfjobs", "code-exec", NS) or {}).get("status", {})
                               .get("codeHash"), timeout=20)
        snapshot = kube.get("v1/configmaps", f"code-exec-code-{status}", NS)
        assert snapshot["data"]["reward_func.py"] == reward.read_text()
        events = kube.kubectl("get", "events", "--field-selector", "involvedObject.name=code-exec", "-o",
                              "jsonpath={.items[*].reason}", namespace=NS).stdout.split()
        assert "RayJobCreated" in events
    assert runner.exit_code == 0, runner.output


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "rlhf_cli.cli", "operator", "--namespace", NS],
    [str(Path(sys.executable).parent / "kopf"), "run", "-m", "rlhf_operator", "--standalone", "--namespace", NS],
], ids=["rlhf-operator", "kopf-run-m"])
def test_operator_commands_run_as_processes(kube, command):
    import os
    import signal
    import subprocess

    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    kube.create_namespace(NS)
    env = {**os.environ, "KUBECONFIG": kube.kubeconfig_path, "RLHF_HEALTH_PORT": "0",
           "RLHF_ALLOW_SECRET_REFERENCES": "true"}  # the example names a token Secret; no webhook here
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kube.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples" / "remote-reward" / "job.yaml"), namespace=NS)
        assert kube.wait_for(lambda: kube.get("ray.io/v1/rayjobs", "remote-judge", NS), timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
