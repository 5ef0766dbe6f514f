"""A checkpoint path that is not on a persistent volume is lost with the Ray cluster: `rlhf validate`
warns (exit 0: the job is valid, and `rlhf run` is not affected), and every example that runs on a
cluster keeps its checkpoints and model on a PersistentVolumeClaim."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_api.advice import EPHEMERAL_CHECKPOINTS, checkpoint_persistence, final_model_path, job_warnings
from rlhf_api.validation import parse_spec
from support.jobs import minimal_spec, write_job

ROOT = Path(__file__).resolve().parents[2]
# Not meant for a cluster's storage: the CPU quickstart (rlhf run) and the smoke job (any cluster, no PVC).
NOT_KEPT = {"quickstart.yaml", "smoke/job.yaml"}


@pytest.mark.parametrize("checkpoint, warned", [
    ({}, True),
    ({"volume": {"emptyDir": {}}}, True),
    ({"volume": {"emptyDir": {"medium": "Memory"}}}, True),
    ({"volume": {"ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}}}, True),
    ({"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}, False),
    ({"volume": {"csi": {"driver": "s3.csi.aws.com"}}}, False),
])
def test_only_storage_that_outlives_the_pod_is_quiet(checkpoint, warned):
    spec = parse_spec(minimal_spec(checkpoint={"path": "/ckpt", **checkpoint}))
    warning = checkpoint_persistence(spec)
    assert (warning is not None) is warned
    if warned:
        assert warning.field == "spec.checkpoint.volume" and warning.reason == EPHEMERAL_CHECKPOINTS
        assert "/ckpt" in warning.message and "persistentVolumeClaim: {claimName" in warning.message
        assert job_warnings(spec) == [warning]


def test_validate_prints_the_warning_and_still_exits_0(tmp_path):
    path = write_job(tmp_path, minimal_spec(), name="ephemeral")
    done = subprocess.run([sys.executable, "-m", "rlhf_cli", "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{path}: warning: spec.checkpoint.volume: checkpoint.path /checkpoints is an emptyDir" in done.stderr
    kept = write_job(tmp_path, minimal_spec(checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "c"}}}), "kept")
    done = subprocess.run([sys.executable, "-m", "rlhf_cli", "validate", str(kept)], capture_output=True, text=True)
    assert done.returncode == 0 and "warning: spec.checkpoint" not in done.stderr, done.stderr


def test_the_final_model_path_follows_a_persistent_checkpoint_volume_only():
    assert final_model_path({"checkpoint": {"path": "/ckpt/a/", "volume": {"persistentVolumeClaim": {"claimName": "c"}}}}) \
        == "/ckpt/a/final_model"
    assert final_model_path({"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "c"}}}}) == "/checkpoints/final_model"
    assert final_model_path({"checkpoint": {"path": "/ckpt", "volume": {"emptyDir": {}}}}) is None
    assert final_model_path({}) is None


def _cluster_examples():
    for path in sorted((ROOT / "examples").glob("**/*.yaml")):
        if path.relative_to(ROOT / "examples").as_posix() in NOT_KEPT:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RLHFJob":
                yield pytest.param(doc, id=path.relative_to(ROOT / "examples").as_posix())


@pytest.mark.parametrize("doc", list(_cluster_examples()))
def test_every_cluster_example_keeps_its_model_on_a_pvc(doc):
    spec = parse_spec(doc["spec"])
    assert checkpoint_persistence(spec) is None
    assert "persistentVolumeClaim" in spec.checkpoint.volume
