"""examples/smoke: a first job for any conformant cluster, with no GPU, no PVC and no hub access.

Fast: it validates (warning only that its checkpoints are ephemeral, which it accepts), renders to
one CPU-only head pod that mounts the prompts ConfigMap its kustomization generates, and asks the
driver to make the tiny model. Slow: the worker config the operator renders for it runs through the
RayJob's entrypoint (`python -m rlhf_workers --config`) on a 2-CPU Ray, as the head pod would run it,
with only the paths of the pod's mounts swapped for local ones."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_api.validation import load_job
from rlhf_api.workerconfig import CONFIG_FILE, REWARD_FILE, WorkerConfig
from rlhf_operator.render import render

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "examples" / "smoke"


def rendered():
    job = load_job(SMOKE / "job.yaml")
    job.metadata.namespace, job.metadata.uid = "default", "7f3c2a4e-1111-2222-3333-444455556666"
    return render(job, {})


def test_smoke_validates_with_only_the_ephemeral_checkpoint_warning():
    done = subprocess.run([sys.executable, "-m", "rlhf_cli", "validate", str(SMOKE / "job.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 1 and "spec.checkpoint.volume" in warnings[0], done.stderr


def test_smoke_renders_one_cpu_head_pod_that_needs_no_gpu_pvc_or_hub():
    configmap, rayjob = rendered()
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["workerGroupSpecs"] == []
    pod = cluster["headGroupSpec"]["template"]["spec"]
    text = json.dumps(rayjob)
    assert "persistentVolumeClaim" not in text and "nvidia.com/gpu" not in text
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["prompts"]["configMap"]["name"] == "smoke-prompts"
    config = WorkerConfig.model_validate_json(configmap["data"][CONFIG_FILE])
    assert config.create_tiny_model is True
    assert config.spec.model.path.startswith("/tmp/")  # a writable emptyDir under the read-only root
    assert config.spec.rollout.backend == "transformers" and config.spec.data.prompts == "/data/smoke/prompts.jsonl"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_kustomization_generates_the_configmap_the_job_mounts(tmp_path):
    built = subprocess.run(["kubectl", "kustomize", str(SMOKE)], capture_output=True, text=True, check=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(built)}
    assert docs["ConfigMap"]["metadata"]["name"] == "smoke-prompts"
    assert docs["ConfigMap"]["data"]["prompts.jsonl"] == (SMOKE / "prompts.jsonl").read_text()
    volume, = docs["RLHFJob"]["spec"]["cluster"]["volumes"]
    assert volume["source"]["configMap"]["name"] == "smoke-prompts"
    assert docs["RLHFJob"]["spec"]["data"]["prompts"] == f"{volume['mountPath']}/prompts.jsonl"


@pytest.mark.slow
def test_smoke_runs_through_the_rayjob_entrypoint_making_its_own_model(tmp_path):
    import ray
    from transformers import AutoModelForCausalLM

    from rlhf_workers.__main__ import main

    configmap, _ = rendered()
    config = WorkerConfig.model_validate_json(configmap["data"][CONFIG_FILE])
    (tmp_path / REWARD_FILE).write_text(configmap["data"][REWARD_FILE])
    spec = config.spec.model_copy(update={
        "model": config.spec.model.model_copy(update={"path": str(tmp_path / "tmp" / "smoke" / "tiny-model")}),
        "data": config.spec.data.model_copy(update={"prompts": str(SMOKE / "prompts.jsonl")}),
    })
    local = config.model_copy(update={"spec": spec, "reward_code_path": str(tmp_path / REWARD_FILE),
                                      "output_dir": str(tmp_path / "checkpoints"), "progress_port": 0})
    (tmp_path / CONFIG_FILE).write_text(local.to_json())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the head pod's cpu: 2
    try:
        assert main(["--config", str(tmp_path / CONFIG_FILE)]) == 0
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert (tmp_path / "tmp" / "smoke" / "tiny-model" / "config.json").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "final_model")
