"""examples/gitops: a kustomization that generates the reward ConfigMap and an RLHFJob using it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_api.validation import load_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gitops"
RLHF = [sys.executable, "-c", "import sys; from rlhf_cli.cli import main; sys.exit(main(sys.argv[1:]))"]
NAME_PATH = "spec/reward/function/configMapRef/name"


def kustomization() -> dict:
    return yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())


def test_job_passes_rlhf_validate():
    result = subprocess.run([*RLHF, "validate", str(EXAMPLE / "job.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def test_generator_builds_the_configmap_the_job_references():
    k = kustomization()
    assert k["kind"] == "Kustomization"
    assert "job.yaml" in k["resources"]
    (gen,) = k["configMapGenerator"]
    assert gen["files"] == ["reward_func.py"] and (EXAMPLE / "reward_func.py").is_file()
    # The hash suffix stays on: the nameReference configuration keeps the job pointing at it.
    assert not (k.get("generatorOptions") or {}).get("disableNameSuffixHash")
    job = load_job(EXAMPLE / "job.yaml")
    ref = job.spec.reward.function.config_map_ref
    assert ref.name == gen["name"] and ref.key == "reward_func.py"


def test_name_reference_configuration_targets_rlhfjob_configmap_refs():
    k = kustomization()
    (config_file,) = k["configurations"]
    config = yaml.safe_load((EXAMPLE / config_file).read_text())
    (ref,) = config["nameReference"]
    assert (ref["kind"], ref["version"]) == ("ConfigMap", "v1")
    specs = {(s["group"], s["kind"], s["path"]) for s in ref["fieldSpecs"]}
    assert ("rlhf.dev", "RLHFJob", NAME_PATH) in specs
    assert ("rlhf.dev", "RLHFJob", "spec/agent/configMapRef/name") in specs


def test_reward_function_follows_openrlhf_contract():
    namespace: dict = {}
    source = (EXAMPLE / "reward_func.py").read_text()
    from rlhf_api.contract import check_reward_source

    check_reward_source(source)  # the operator's own static check of reward code
    torch = pytest.importorskip("torch")
    exec(compile(source, "reward_func.py", "exec"), namespace)
    prompts = ["Name a fruit:", "Name a color:"]
    queries = [prompts[0] + " An apple.", prompts[1] + " I like " + "x" * 600]
    out = namespace["reward_func"](queries, prompts, ["apple", "blue"])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].shape == (2,) and out["rewards"][0].item() == 1.0 and out["rewards"][1].item() < 0
    assert torch.all((out["scores"] >= 0) & (out["scores"] <= 1))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_build_rewrites_the_job_to_the_hashed_configmap(tmp_path):
    result = subprocess.run(["kubectl", "kustomize", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "RLHFJob")
    assert cm["metadata"]["name"].startswith("keyword-reward-") and cm["metadata"]["name"] != "keyword-reward"
    assert cm["data"]["reward_func.py"] == (EXAMPLE / "reward_func.py").read_text()
    assert job["spec"]["reward"]["function"]["configMapRef"]["name"] == cm["metadata"]["name"]
    built = tmp_path / "job.yaml"
    built.write_text(yaml.safe_dump(job))
    check = subprocess.run([*RLHF, "validate", str(built)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
