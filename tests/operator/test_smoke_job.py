"""examples/smoke through the operator on the emulator: the RayJob it creates asks its driver for
the tiny model, mounts the prompts ConfigMap, runs on one CPU head pod, and the job gets its one
EphemeralCheckpoints warning (the smoke job keeps nothing, by design)."""

import json
from pathlib import Path

import yaml

from support.operator_env import NS, RAYJOBS

SMOKE = Path(__file__).resolve().parents[2] / "examples" / "smoke" / "job.yaml"


def test_the_smoke_job_launches_a_cpu_only_rayjob_that_makes_its_own_model(kube, operator):
    operator.start()
    doc = yaml.safe_load(SMOKE.read_text())
    doc["metadata"]["namespace"] = NS
    kube.create(doc)
    rayjob = kube.wait_for(lambda: kube.get(RAYJOBS, "smoke", NS))
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["workerGroupSpecs"] == []
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert {"name": "prompts", "configMap": {"name": "smoke-prompts"}} in head["volumes"]
    snapshot = next(v["configMap"]["name"] for v in head["volumes"] if v["name"] == "rlhf-config")
    config = json.loads(kube.get("v1/configmaps", snapshot, NS)["data"]["worker.json"])
    assert config["createTinyModel"] is True and config["spec"]["model"]["path"] == "/tmp/smoke/tiny-model"
    warnings = kube.wait_for(lambda: [e for e in kube.events(NS, involved_name="smoke", involved_kind="RLHFJob")
                                      if e["reason"] == "EphemeralCheckpoints"])
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
