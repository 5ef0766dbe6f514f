"""The spec model: defaults, every validation rule, and error messages that name the field."""

import pytest

from rlhf_api.spec import RLHFJobSpec, immutable_changes
from rlhf_api.validation import InvalidJob, parse_job
from support.jobs import REWARD_SOURCE, job


def errors_of(doc):
    with pytest.raises(InvalidJob) as info:
        parse_job(doc)
    return {e.path: e.message for e in info.value.errors}


def test_minimal_job_gets_openrlhf_defaults():
    spec = parse_job(job()).spec
    assert spec.algorithm.advantage_estimator == "gae"
    assert spec.algorithm.n_samples_per_prompt == 1
    assert spec.algorithm.kl.estimator == "k1" and spec.algorithm.kl.use_loss is False
    assert spec.algorithm.clip_range == 0.2 and spec.algorithm.lambd == 0.95
    assert spec.rollout.backend == "vllm" and spec.rollout.max_new_tokens == 1024
    assert spec.training.zero_stage == 2 and spec.training.micro_batch_size == 8
    assert spec.data.input_key == "input" and spec.data.label_key is None
    assert spec.checkpoint.path == "/checkpoints" and spec.suspend is False


def test_yaml_is_camel_case_and_python_snake_case():
    spec = parse_job(job(algorithm={"advantageEstimator": "rloo", "nSamplesPerPrompt": 4,
                                    "async": {"enabled": True, "maxStaleness": 2},
                                    "dynamicFiltering": {"enabled": True, "scoreRange": [0.1, 0.9]}})).spec
    assert spec.algorithm.n_samples_per_prompt == 4
    assert spec.algorithm.async_.max_staleness == 2
    dumped = spec.dump()["algorithm"]
    assert dumped["nSamplesPerPrompt"] == 4 and dumped["async"] == {"enabled": True, "maxStaleness": 2}
    assert RLHFJobSpec.model_validate(spec.dump()) == spec  # round trip


def test_unknown_field_is_named_with_a_fix():
    errors = errors_of(job(algorithm={"nSamplesPerPromt": 4}))
    assert "spec.algorithm.nSamplesPerPromt" in errors
    assert "spelling" in errors["spec.algorithm.nSamplesPerPromt"]


def test_missing_required_fields_are_named():
    errors = errors_of(job(model=None, data={"inputKey": "q"}))
    assert "spec.model" in errors and "spec.data.prompts" in errors


def test_reward_or_agent_is_required():
    errors = errors_of(job(reward=None))
    assert "spec.reward" in errors and "spec.agent" in errors["spec.reward"]


def test_reward_and_agent_together_are_rejected():
    errors = errors_of(job(agent={"path": "agent_func.py"}))
    assert "spec.agent" in errors


@pytest.mark.parametrize("reward", [
    {"function": {"path": "r.py"}, "remote": {"url": "http://x"}},
    {"function": {"path": "r.py"}, "model": {"path": "/rm"}},
    {},
])
def test_exactly_one_reward_source(reward):
    errors = errors_of(job(reward=reward))
    assert any("exactly one of reward.function, reward.remote or reward.model" in m for m in errors.values())


def test_code_source_needs_exactly_one_form():
    errors = errors_of(job(reward={"function": {"path": "r.py", "inline": REWARD_SOURCE}}))
    assert "spec.reward.function" in errors and "exactly one of inline, configMapRef or path" in errors["spec.reward.function"]


@pytest.mark.parametrize("estimator", ["rloo", "group_norm", "dr_grpo", "reinforce_baseline"])
def test_group_estimators_need_several_samples(estimator):
    errors = errors_of(job(algorithm={"advantageEstimator": estimator, "nSamplesPerPrompt": 1}))
    assert "spec.algorithm.nSamplesPerPrompt" in errors
    assert estimator in errors["spec.algorithm.nSamplesPerPrompt"]


@pytest.mark.parametrize("estimator", ["gae", "reinforce"])
def test_single_sample_estimators_accept_one_sample(estimator):
    assert parse_job(job(algorithm={"advantageEstimator": estimator})).spec.algorithm.n_samples_per_prompt == 1


def test_unknown_estimator_lists_the_choices():
    errors = errors_of(job(algorithm={"advantageEstimator": "grpo"}))
    assert "group_norm" in errors["spec.algorithm.advantageEstimator"]


def test_dynamic_filtering_needs_groups():
    errors = errors_of(job(algorithm={"advantageEstimator": "reinforce", "dynamicFiltering": {"enabled": True}}))
    assert "spec.algorithm.nSamplesPerPrompt" in errors and "dynamicFiltering" in errors["spec.algorithm.nSamplesPerPrompt"]


def test_dynamic_filtering_needs_scores_not_a_reward_model():
    errors = errors_of(job(reward={"model": {"path": "/rm"}},
                           algorithm={"advantageEstimator": "rloo", "nSamplesPerPrompt": 4, "dynamicFiltering": {"enabled": True}}))
    assert "spec.algorithm.dynamicFiltering.enabled" in errors


def test_dynamic_filtering_range_must_be_ordered():
    errors = errors_of(job(algorithm={"advantageEstimator": "rloo", "nSamplesPerPrompt": 4,
                                      "dynamicFiltering": {"enabled": True, "scoreRange": [0.9, 0.1]}}))
    assert "spec.algorithm.dynamicFiltering.scoreRange" in errors


def test_dynamic_filtering_works_with_remote_and_agent():
    algo = {"advantageEstimator": "group_norm", "nSamplesPerPrompt": 4, "dynamicFiltering": {"enabled": True}}
    assert parse_job(job(reward={"remote": {"url": "https://rm.example/score"}}, algorithm=algo))
    agent = "class AgentInstance:\n    pass\n"
    assert parse_job(job(reward=None, agent={"inline": agent}, algorithm=algo))


def test_inline_reward_must_parse():
    errors = errors_of(job(reward={"function": {"inline": "def reward_func(q, p, l):\n  return {\n"}}))
    assert "does not parse" in errors["spec.reward.function.inline"]


def test_inline_reward_must_define_reward_func():
    errors = errors_of(job(reward={"function": {"inline": "def reward(q, p, l):\n  return {}\n"}}))
    assert "must define reward_func" in errors["spec.reward.function.inline"]


def test_inline_reward_func_must_take_three_arguments():
    errors = errors_of(job(reward={"function": {"inline": "def reward_func(queries):\n  return {}\n"}}))
    assert "(queries, prompts, labels)" in errors["spec.reward.function.inline"]


def test_inline_reward_func_with_kwargs_is_accepted():
    source = "def reward_func(queries, prompts, labels, **kwargs):\n  return {'rewards': []}\n"
    assert parse_job(job(reward={"function": {"inline": source}}))


def test_inline_agent_must_define_agent_classes():
    errors = errors_of(job(reward=None, agent={"inline": "def step():\n  pass\n"}))
    assert "AgentExecutor" in errors["spec.agent.inline"]


def test_remote_url_must_be_http():
    errors = errors_of(job(reward={"remote": {"url": "ftp://x"}}))
    assert "spec.reward.remote.url" in errors


def test_train_batch_must_divide_into_micro_batches_per_trainer():
    errors = errors_of(job(training={"trainBatchSize": 10, "microBatchSize": 4}))
    assert "spec.training.trainBatchSize" in errors and "microBatchSize" in errors["spec.training.trainBatchSize"]


def test_quantities_are_checked_and_normalized():
    spec = parse_job(job(cluster={"head": {"cpu": 4, "memory": "16Gi"}, "trainer": {"cpu": "500m"}})).spec
    assert spec.cluster.head.cpu == "4" and spec.cluster.trainer.cpu == "500m"
    errors = errors_of(job(cluster={"trainer": {"memory": "lots"}}))
    assert "spec.cluster.trainer.memory" in errors and "16Gi" in errors["spec.cluster.trainer.memory"]


def test_checkpoint_volume_must_be_one_volume_source():
    ok = parse_job(job(checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}))
    assert ok.spec.checkpoint.volume == {"persistentVolumeClaim": {"claimName": "ckpt"}}
    errors = errors_of(job(checkpoint={"volume": {"claimName": "ckpt"}}))
    assert "spec.checkpoint.volume" in errors


def test_name_must_leave_room_for_derived_names():
    doc = job()
    doc["metadata"]["name"] = "x" * 50
    assert "metadata.name" in errors_of(doc)
    doc["metadata"]["name"] = "Bad_Name"
    assert "metadata.name" in errors_of(doc)


def test_api_version_and_kind_are_checked():
    doc = job()
    doc["apiVersion"] = "rlhf.dev/v1"
    assert "apiVersion" in errors_of(doc)


def test_input_template_needs_a_slot():
    errors = errors_of(job(data={"prompts": "p.jsonl", "inputTemplate": "Question:"}))
    assert "spec.data.inputTemplate" in errors


def test_immutable_fields_are_reported_but_suspend_may_change():
    old = parse_job(job()).spec
    new = parse_job(job(suspend=True, activeDeadlineSeconds=100)).spec
    assert immutable_changes(old, new) == []
    changed = parse_job(job(model={"path": "/models/other"}, training={"learningRate": 1e-5})).spec
    assert immutable_changes(old, changed) == ["spec.model", "spec.training"]


@pytest.mark.parametrize("overrides, path, hint", [
    ({"algorithm": {"advantageEstimator": "rloo", "nSamplesPerPrompt": "4"}}, "spec.algorithm.nSamplesPerPrompt", "whole number"),
    ({"training": {"bf16": "yes"}}, "spec.training.bf16", "true or false"),
    ({"cluster": {"head": {"cpu": 0.5}}}, "spec.cluster.head.cpu", '"500m"'),
    ({"cluster": {"head": {"memory": "-4Gi"}}}, "spec.cluster.head.memory", "quantity"),
    ({"reward": {"remote": {"url": "rm.example"}}}, "spec.reward.remote.url", "http:// or https:// URL"),
    ({"model": "/models/x"}, "spec.model", "mapping"),
])
def test_types_are_as_strict_as_the_api_server_with_a_hint(overrides, path, hint):
    errors = errors_of(job(**overrides))
    assert path in errors and hint in errors[path], errors


@pytest.mark.parametrize("cluster, checkpoint, path, hint", [
    ({"volumes": [{"name": "dshm", "mountPath": "/x", "source": {"emptyDir": {}}}]}, None, "spec.cluster.volumes[0].name", "used by the operator"),
    ({"volumes": [{"name": "a", "mountPath": "/dev/shm", "source": {"emptyDir": {}}}]}, None, "spec.cluster.volumes[0].mountPath", "mount elsewhere"),
    ({"volumes": [{"name": "a", "mountPath": "/x", "source": {"hostPath": {"path": "/"}}}]}, None, "spec.cluster.volumes[0].source", "restricted"),
    ({"volumes": [{"name": "a", "mountPath": "/x", "source": {"emptyDir": {}}},
                  {"name": "a", "mountPath": "/y", "source": {"emptyDir": {}}}]}, None, "spec.cluster.volumes[1].name", "twice"),
    ({"volumes": [{"name": "a", "mountPath": "/ckpt", "source": {"emptyDir": {}}}]}, {"path": "/ckpt"}, "spec.cluster.volumes[0].mountPath", "checkpoint.volume"),
    (None, {"volume": {"hostPath": {"path": "/data"}}}, "spec.checkpoint.volume", "restricted"),
])
def test_volumes_cannot_break_the_pods(cluster, checkpoint, path, hint):
    overrides = {k: v for k, v in (("cluster", cluster), ("checkpoint", checkpoint)) if v is not None}
    errors = errors_of(job(**overrides))
    assert path in errors and hint in errors[path], errors
