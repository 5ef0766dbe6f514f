"""kubectl's habits in the `rlhf` command: -o yaml|json, -n, --version, "did you mean", one
error style for every kind of mistake, and exit 1 (unreadable) versus 2 (invalid)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_cli.cli import main
from support.jobs import job

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, doc, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_version_prints_the_installed_package_version():
    from importlib.metadata import version

    result = subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"rlhf {version('rlhf-operator')}"


def test_render_json_is_a_v1_list_of_the_same_objects_as_yaml(tmp_path, capsys):
    path = write(tmp_path, job())
    code, as_yaml, _ = run_cli(capsys, "render", path)
    assert code == 0
    code, as_json, _ = run_cli(capsys, "render", path, "-o", "json")
    assert code == 0
    listed = json.loads(as_json)
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    assert listed["items"] == list(yaml.safe_load_all(as_yaml))


def test_render_short_namespace_flag_places_every_object(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "render", write(tmp_path, job()), "-n", "team-z")
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert objects and {o["metadata"]["namespace"] for o in objects} == {"team-z"}


def test_validate_output_prints_the_job_with_defaults_and_summary_on_stderr(tmp_path, capsys):
    code, out, err = run_cli(capsys, "validate", write(tmp_path, job()), "-o", "json", "-n", "ns1")
    assert code == 0 and "ok: demo: valid RLHFJob" in err
    stored = json.loads(out)
    assert stored["metadata"]["namespace"] == "ns1"
    # Defaults the user did not write are filled in, as the operator will read them.
    assert stored["spec"]["algorithm"]["advantageEstimator"] == "gae"
    assert stored["spec"]["training"]["zeroStage"] == 2
    code, out, _ = run_cli(capsys, "validate", write(tmp_path, job()), "-o", "yaml")
    assert yaml.safe_load(out)["spec"] == stored["spec"]


def test_crd_json_matches_the_yaml_and_a_file_target_still_writes_the_committed_crd(tmp_path, capsys):
    from rlhf_api.crd import crd_yaml

    code, out, _ = run_cli(capsys, "crd", "-o", "json")
    generated = crd_yaml()  # what crds/ holds when it is not stale (tests/unit/test_crd.py checks that)
    assert code == 0 and json.loads(out) == yaml.safe_load(generated)
    target = tmp_path / "crd.yaml"
    assert run_cli(capsys, "crd", "-o", target)[0] == 0
    assert target.read_text() == generated


@pytest.mark.parametrize("field, typo, meant", [
    ("algorithm", "nSamplePerPrompt", "nSamplesPerPrompt"),
    ("algorithm", "nsamplesperprompt", "nSamplesPerPrompt"),
    ("algorithm", "n_samples_per_prompt", "nSamplesPerPrompt"),  # the Python name: the API server would drop it
    ("training", "learningrate", "learningRate"),
    ("rollout", "maxNewToken", "maxNewTokens"),
])
def test_unknown_field_suggests_the_field_it_resembles(tmp_path, capsys, field, typo, meant):
    code, _, err = run_cli(capsys, "validate", write(tmp_path, job(**{field: {typo: 4}})))
    assert code == 2
    assert f"spec.{field}.{typo}: unknown field; check its spelling: did you mean {meant}?" in err


def test_unknown_field_in_a_list_item_and_a_nonsense_name_keep_the_plain_hint(tmp_path, capsys):
    doc = job(cluster={"volumes": [{"name": "m", "mountPath": "/m", "sorce": {"emptyDir": {}}, "source": {"emptyDir": {}}}],
                       "zzzqqq": 1})
    code, _, err = run_cli(capsys, "validate", write(tmp_path, doc))
    assert code == 2
    assert "spec.cluster.volumes[0].sorce: unknown field; check its spelling: did you mean source?" in err
    assert "spec.cluster.zzzqqq: unknown field; check its spelling" in err


def test_every_kind_of_mistake_is_one_line_in_the_project_style(tmp_path, capsys):
    doc = job(algorithm={"advantageEstimator": "grpo", "nSamplesPerPrompt": 0, "kl": {"estimator": "k4"}},
              rollout={"backend": "sglang", "topP": 2}, logging={"logLevel": "info"}, model={"path": ""})
    path = write(tmp_path, doc)
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 2
    lines = err.strip().splitlines()
    expected = [
        "spec.algorithm.advantageEstimator: must be one of gae, reinforce, reinforce_baseline, rloo, group_norm,"
        " dr_grpo (got 'grpo'); did you mean dr_grpo?",
        "spec.algorithm.kl.estimator: must be one of k1, k2, k3 (got 'k4')",
        "spec.algorithm.nSamplesPerPrompt: must be >= 1 (got 0)",
        "spec.rollout.backend: must be one of vllm, transformers (got 'sglang')",
        "spec.rollout.topP: must be <= 1.0 (got 2)",
        "spec.logging.logLevel: must be one of DEBUG, INFO, WARNING, ERROR (got 'info'); did you mean INFO?",
        "spec.model.path: must not be empty",
    ]
    for message in expected:
        assert any(line.startswith(f"{path}:") and line.endswith(message) for line in lines), (message, lines)
    assert "Input should" not in err and "Traceback" not in err


def test_unreadable_input_exits_1_and_invalid_input_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert run_cli(capsys, "validate", missing)[0] == 1
    assert run_cli(capsys, "render", missing)[0] == 1
    assert run_cli(capsys, "validate", tmp_path)[0] == 1  # a directory
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert run_cli(capsys, "validate", broken)[0] == 2
    assert run_cli(capsys, "validate", write(tmp_path, job(algorithm={"bogus": 1})))[0] == 2
    # Both at once: the worse (invalid) wins, and both are reported.
    code, _, err = run_cli(capsys, "validate", missing, broken)
    assert code == 2 and "cannot read" in err and "not valid YAML" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_exits_1(tmp_path, capsys):
    path = write(tmp_path, job())
    path.chmod(0)
    code, _, err = run_cli(capsys, "validate", path)
    assert code == 1 and "cannot read: Permission denied" in err


def test_a_long_wrong_value_is_quoted_short(tmp_path, capsys):
    code, _, err = run_cli(capsys, "validate", write(tmp_path, job(training={"maxEpochs": "x" * 5000})))
    assert code == 2
    (line,) = [line for line in err.splitlines() if "spec.training.maxEpochs" in line]
    assert "must be a whole number, unquoted (got 'xxx" in line and "(5002 characters)" in line
    assert len(line) < 300


def test_unreadable_files_of_every_command_exit_1_and_a_malformed_option_2(tmp_path, capsys):
    job_file = write(tmp_path, job())
    code, _, err = run_cli(capsys, "test-reward", tmp_path / "nope.py", "--data", tmp_path / "nope.jsonl")
    assert code == 1 and err.strip() == f"{tmp_path / 'nope.py'}: cannot read: No such file or directory"
    assert run_cli(capsys, "run", tmp_path / "nope.yaml")[0] == 1
    code, _, err = run_cli(capsys, "render", job_file, "--configmap", f"rw={tmp_path / 'nope.py'}")
    assert code == 1 and "nope.py: cannot read" in err
    code, out, err = run_cli(capsys, "render", job_file, "--configmap", "just-a-name")
    assert (code, out) == (2, "") and err.strip() == f"{job_file}: --configmap expects NAME=FILE (got 'just-a-name')"


def test_a_misspelt_spec_or_metadata_key_is_named_where_it_is(tmp_path, capsys):
    document = job()
    document["sepc"] = document.pop("spec")
    document["metdata"] = document.pop("metadata")
    path = write(tmp_path, document)
    code, _, err = run_cli(capsys, "validate", path)
    lines = err.strip().splitlines()
    assert code == 2
    text = path.read_text().splitlines()
    for typo, meant in (("metdata", "metadata"), ("sepc", "spec")):
        line = text.index(f"{typo}:") + 1
        assert f"{path}:{line}: {typo}: unknown field; check its spelling: did you mean {meant}?" in lines
    assert not any("required field is missing" in line for line in lines)
