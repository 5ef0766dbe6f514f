"""A rendered job run through its head pod's view: the rendered mounts, env and non-root user,
a Ray head started with KubeRay's command, the job submitted with KubeRay's submit script, and
the progress endpoint polled as the operator polls it. Then the pod is evicted mid-run and a
fresh head (a KubeRay retry: new cluster name, new submission) resumes from the volume.

CPU, tiny model, transformers rollouts; about two minutes.
"""

from __future__ import annotations

import json
import os

import pytest

from rlhf_operator.config import OperatorConfig
from rlhf_api.progress import PROGRESS_PORT
from rlhf_operator.render import RenderOptions, render
from rlhf_api.validation import parse_job
from support import kuberay, podview

pytestmark = [pytest.mark.slow, pytest.mark.skipif(podview.supported() is not None,
                                                    reason=f"pod view: {podview.supported()}")]

NS = "team-a"
UID = 1000  # the worker image's user, as rendered
REWARD = '''
import os
import time

import torch

def reward_func(queries, prompts, labels):
    assert os.getuid() != 0, "the reward runs as the pod's non-root user"
    time.sleep(1.0)  # a step long enough for the test to evict the pod between two checkpoints
    return {"rewards": torch.tensor([float(len(q) % 7) for q in queries]) / 7}
'''


def _spec() -> dict:
    return {
        "model": {"path": "/mnt/models/tiny"},
        "data": {"prompts": "/mnt/data/prompts.jsonl", "inputKey": "prompt", "labelKey": "target"},
        "reward": {"function": {"inline": REWARD}},
        "algorithm": {"advantageEstimator": "group_norm", "nSamplesPerPrompt": 2},
        "rollout": {"backend": "transformers", "maxNewTokens": 8, "promptMaxLen": 64},
        "training": {"maxSteps": 4, "rolloutBatchSize": 4, "trainBatchSize": 8, "microBatchSize": 4,
                     "learningRate": 1e-3, "warmupRatio": 0.0, "zeroStage": 0, "trainers": 1, "bf16": False, "seed": 3},
        "checkpoint": {"path": "/mnt/checkpoints", "saveSteps": 1, "maxKeep": 2,
                       "volume": {"persistentVolumeClaim": {"claimName": "checkpoints"}}},
        "cluster": {"placement": "colocated", "trainer": {"replicas": 0},
                    "volumes": [{"name": "models", "mountPath": "/mnt/models",
                                 "source": {"persistentVolumeClaim": {"claimName": "models"}}},
                                {"name": "data", "mountPath": "/mnt/data",
                                 "source": {"persistentVolumeClaim": {"claimName": "data"}}}]},
    }


@pytest.fixture
def claims(tmp_path):
    from rlhf_workers.tiny import make_tiny_model

    root = tmp_path / "claims"
    make_tiny_model(root / "models" / "tiny")
    (root / "data").mkdir(parents=True)
    (root / "data" / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {i}", "target": "a"}) + "\n" for i in range(32)))
    (root / "checkpoints").mkdir()
    for path in root.rglob("*"):  # as provisioned: readable by all, the checkpoint volume writable by the pod
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(root, 0o755)
    os.chmod(tmp_path, 0o755)
    return {"models": root / "models", "data": root / "data", "checkpoints": root / "checkpoints"}


def _pod(tmp_path, claims, attempt: int, objects, cfg: OperatorConfig) -> podview.HeadPod:
    config_map, rayjob = objects
    cluster = kuberay.cluster_name(rayjob["metadata"]["name"])
    home = tmp_path / "home"
    if not home.exists():
        home.mkdir()
        os.chown(home, UID, UID)
    url = cfg.progress_url.format(cluster=cluster, namespace=NS, port=PROGRESS_PORT, job=rayjob["metadata"]["name"])
    workdir = tmp_path / f"attempt-{attempt}"
    workdir.mkdir()
    return podview.HeadPod(rayjob, config_map, cluster, claims, workdir, home, url,
                           cfg.progress_interval, cfg.progress_timeout)


def test_the_rendered_head_pod_trains_reports_its_end_and_resumes_on_a_fresh_head(tmp_path, claims):
    # The operator's settings, at a poll interval a test can wait for; the driver lingers for it.
    cfg = OperatorConfig(progress_interval=1.0, progress_timeout=1.0)
    job = parse_job({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
                     "metadata": {"name": "pod-view", "namespace": NS, "uid": "u-1"}, "spec": _spec()})
    objects = render(job, {}, RenderOptions(default_image="example/workers:test",
                                            progress_linger_seconds=cfg.progress_linger_seconds))
    ckpt = claims["checkpoints"]

    # First head: evicted once a checkpoint is complete and training goes on.
    first = _pod(tmp_path, claims, 1, objects, cfg).start()
    try:
        podview.wait_until(lambda: podview.checkpoint_steps(ckpt), 300, "a first checkpoint", first)
        seen = podview.wait_until(lambda: [r for r in first.reports() if r.get("state") == "training"],
                                  30, "a training report", first)
    finally:
        first.kill()
    resumed_from = podview.checkpoint_steps(ckpt)[-1]
    assert resumed_from < 4, first.logs()
    assert seen[0]["totalSteps"] == 4

    # A KubeRay retry: a new cluster and submission id, the same volume.
    second = _pod(tmp_path, claims, 2, objects, cfg).start()
    try:
        assert second.wait(timeout=300) == 0, second.logs()
    finally:
        second.kill()
    assert (second.results / "submitter.rc").read_text().strip() == "0", second.logs()
    # readOnlyRootFilesystem: the image's home (the user's own) refuses a write, its cache emptyDir takes one.
    assert "Read-only file system" in (second.results / "root-write.log").read_text(), second.logs()
    assert (second.results / "cache-write.log").read_text() == "", second.logs()
    assert "succeeded" in (second.results / "job-status.log").read_text(), second.logs()  # `ray job status`
    reports = [r for r in second.reports() if "state" in r]
    training = [r for r in reports if r["state"] == "training"]
    # The resumed driver names the checkpoint it resumed from at once, before any new step.
    assert training and training[0]["lastCheckpoint"]["step"] == resumed_from, second.logs()
    assert training[0]["step"] == resumed_from
    # The end is seen: final step, the last checkpoint and the final model, by the operator's poll.
    final = [r for r in reports if r["state"] == "finished"]
    assert final, f"no finished report among {[r.get('state') for r in reports]}\n{second.logs()}"
    assert final[-1]["step"] == 4 and final[-1]["lastCheckpoint"]["step"] == 4
    assert final[-1]["finalModel"] == "/mnt/checkpoints/final_model"
    assert "rewardMean" in final[-1]
    # What the pod wrote, it wrote as the rendered user, on the volume.
    final_model = ckpt / "final_model"
    assert (final_model / "config.json").is_file()
    assert {p.stat().st_uid for p in ckpt.rglob("*")} == {UID}
    assert podview.checkpoint_steps(ckpt)[-1] == 4
