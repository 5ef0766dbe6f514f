"""The `rlhf` console script, run as a user would run it."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s_schemas import rayjob_errors
from support.jobs import job

ROOT = Path(__file__).resolve().parents[2]
RLHF = [sys.executable, "-m", "rlhf_cli.cli"]


def rlhf(*args, cwd=None):
    return subprocess.run([*RLHF, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def write(tmp_path, doc, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_prints_one_line_summary_for_a_valid_job(tmp_path):
    result = rlhf("validate", write(tmp_path, job()))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "demo" in lines[0] and "valid" in lines[0]


def test_validate_exits_2_with_one_line_per_error_naming_the_field(tmp_path):
    bad = job(algorithm={"advantageEstimator": "rloo", "nSamplesPerPrompt": 1, "bogus": 1}, rollout={"topP": 2})
    result = rlhf("validate", write(tmp_path, bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("spec.algorithm.bogus" in line for line in lines)
    assert any("spec.rollout.topP" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_validate_reports_broken_yaml_and_missing_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = rlhf("validate", broken, tmp_path / "missing.yaml")
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr and "cannot read" in result.stderr


def test_render_prints_every_object_as_yaml(tmp_path):
    result = rlhf("render", write(tmp_path, job()), "--uid", "abc-123")
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    assert [o["kind"] for o in objects] == ["ConfigMap", "RayJob"]
    assert objects[-1]["metadata"]["ownerReferences"][0]["uid"] == "abc-123"
    assert rayjob_errors(objects[-1]) == []


def test_render_takes_configmap_content_from_a_local_file_or_manifest(tmp_path):
    source = "def reward_func(queries, prompts, labels):\n    return {'rewards': [1.0] * len(queries)}\n"
    (tmp_path / "mine.py").write_text(source)
    doc = job(reward={"function": {"configMapRef": {"name": "rw", "key": "reward.py"}}})
    path = write(tmp_path, doc)
    from_file = rlhf("render", path, "--configmap", f"rw={tmp_path / 'mine.py'}")
    assert from_file.returncode == 0, from_file.stderr
    assert next(yaml.safe_load_all(from_file.stdout))["data"]["reward_func.py"] == source

    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rw"}, "data": {"reward.py": source}}
    (tmp_path / "cm.yaml").write_text(yaml.safe_dump(manifest))
    from_manifest = rlhf("render", path, "--configmap", f"rw={tmp_path / 'cm.yaml'}")
    assert from_manifest.stdout == from_file.stdout

    wrong_key = {**manifest, "data": {"other.py": source}}
    (tmp_path / "cm.yaml").write_text(yaml.safe_dump(wrong_key))
    missing = rlhf("render", path, "--configmap", f"rw={tmp_path / 'cm.yaml'}")
    assert missing.returncode == 2 and "has no key 'reward.py'" in missing.stderr


def test_render_without_the_configmap_still_renders_with_a_warning(tmp_path):
    doc = job(reward={"function": {"configMapRef": {"name": "rw"}}})
    result = rlhf("render", write(tmp_path, doc))
    assert result.returncode == 0
    assert "--configmap rw=FILE" in result.stderr
    assert [o["kind"] for o in yaml.safe_load_all(result.stdout)] == ["ConfigMap", "RayJob"]


def test_crd_command_prints_the_committed_crd():
    result = rlhf("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_text()


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "rlhf"
    if not exe.exists():
        pytest.skip("rlhf console script not installed in this environment")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("validate", "render", "crd", "run", "test-reward", "operator"):
        assert command in result.stdout
