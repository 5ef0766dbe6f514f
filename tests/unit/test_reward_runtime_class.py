"""cluster.rewardRuntimeClassName: the head pod (the agent in the driver, the reward workers pinned
there) runs under the named RuntimeClass; the other pods do not, and the pods stay restricted."""

from __future__ import annotations

import pytest

from rlhf_api.podsecurity import pod_specs, restricted_violations
from rlhf_api.validation import InvalidJob, parse_job
from rlhf_operator.render import render
from support.jobs import job


def _rayjob(**changes):
    parsed = parse_job(job(cluster__trainer={"replicas": 1, "gpus": 1}, **changes))
    parsed.metadata.uid = "7f3c2a4e-1111-2222-3333-444455556666"
    return next(o for o in render(parsed, {}) if o["kind"] == "RayJob")


def test_the_head_pod_alone_gets_the_reward_runtime_class_and_stays_restricted():
    rayjob = _rayjob(cluster__rewardRuntimeClassName="gvisor")
    spec = rayjob["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["template"]["spec"]["runtimeClassName"] == "gvisor"
    assert spec["workerGroupSpecs"] and all("runtimeClassName" not in g["template"]["spec"]
                                            for g in spec["workerGroupSpecs"])
    for where, pod in pod_specs(rayjob):
        assert restricted_violations(pod) == [], where


def test_without_it_no_pod_names_a_runtime_class():
    spec = _rayjob()["spec"]["rayClusterSpec"]
    assert "runtimeClassName" not in spec["headGroupSpec"]["template"]["spec"]


def test_a_runtime_class_name_that_is_not_an_object_name_is_refused_naming_the_field():
    with pytest.raises(InvalidJob) as info:
        parse_job(job(cluster__rewardRuntimeClassName="gVisor Sandbox"))
    assert "cluster.rewardRuntimeClassName" in str(info.value)
