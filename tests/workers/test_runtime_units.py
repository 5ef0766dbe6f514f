"""Fast tests of the worker runtime's parts (no Ray, no DeepSpeed): data, packing, schedules,
the transformers rollout engine, checkpoints, metrics, the progress endpoint, local job prep."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf_api.progress import ProgressReport
from rlhf_api.spec import DataSpec
from rlhf_workers.batch import dummy, pack, pad_rows
from rlhf_workers.checkpoint import Checkpoints
from rlhf_workers.data import DataError, PromptStream, load_prompts, read_records
from rlhf_workers.metrics import MetricsLog, ProgressServer, plot_reward_curve
from rlhf_workers.rollout import SamplingConfig, TransformersEngine, _filter
from rlhf_workers.tiny import VOCAB_SIZE, make_tokenizer
from rlhf_workers.session import total_steps_for
from rlhf_workers.train import forward_schedule, train_schedule


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rlhf_workers.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# --------------------------------------------------------------------------- tokenizer


def test_byte_tokenizer_round_trips_any_text(tokenizer):
    text = "héllo\n\tworld ✓ 42"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == VOCAB_SIZE
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s><|user|>hi\n<|assistant|>"
    assert tokenizer.decode([97, tokenizer.eos_token_id], skip_special_tokens=True) == "a"


# --------------------------------------------------------------------------- data


def _data(path, **kw) -> DataSpec:
    return DataSpec(prompts=str(path), **kw)


def test_prompts_from_jsonl_json_parquet_and_saved_dataset(tmp_path, tokenizer):
    rows = [{"q": f"question {i}", "a": str(i)} for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved_single"))
    for name in ("p.jsonl", "p.json", "wrapped.json", "p.parquet", "saved", "saved_single"):
        assert read_records(tmp_path / name) == rows, name
    prompts = load_prompts(_data(tmp_path / "saved", input_key="q", label_key="a", max_samples=3), tokenizer, 64)
    assert [p.text for p in prompts] == ["question 0", "question 1", "question 2"]
    assert [p.label for p in prompts] == ["0", "1", "2"]
    assert prompts[0].token_ids == tuple(b"question 0")


def test_templates_chat_template_and_truncation(tmp_path, tokenizer):
    (tmp_path / "p.jsonl").write_text(json.dumps({"input": "2+2?"}) + "\n" + json.dumps({"input": "x" * 100}) + "\n")
    templated = load_prompts(_data(tmp_path / "p.jsonl", input_template="Q: {}\nA:"), tokenizer, 64)
    assert templated[0].text == "Q: 2+2?\nA:" and templated[0].label == ""
    chat = load_prompts(_data(tmp_path / "p.jsonl", apply_chat_template=True), tokenizer, 64)
    assert chat[0].text == "<s><|user|>2+2?\n<|assistant|>"
    assert len(chat[1].token_ids) == 64 and bytes(chat[1].token_ids[-12:]) == b"<|assistant|>"[-12:]


def test_data_errors_name_the_record_and_the_fix(tmp_path, tokenizer):
    (tmp_path / "p.jsonl").write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"record 0 has no field 'input' \(it has: question\)"):
        load_prompts(_data(tmp_path / "p.jsonl"), tokenizer, 64)
    with pytest.raises(DataError, match="labelKey"):
        load_prompts(_data(tmp_path / "p.jsonl", input_key="question", label_key="answer"), tokenizer, 64)
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_records(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")


def test_prompt_stream_order_is_seeded_and_resumable():
    prompts = [SimpleNamespace(index=i) for i in range(5)]
    a = PromptStream(prompts, episodes=2, seed=7)
    first = [p.index for p in a.take(3)]
    state = a.state()
    rest = [p.index for p in a.take(100)]
    assert len(first + rest) == 10 and sorted(first + rest[:2]) == list(range(5)) and a.exhausted
    b = PromptStream(prompts, episodes=2, seed=7)
    b.restore(state)
    assert [p.index for p in b.take(100)] == rest


def test_total_steps():
    spec = SimpleNamespace(training=SimpleNamespace(episodes=2, rollout_batch_size=4, max_steps=None))
    assert total_steps_for(spec, 10, None) == 5
    assert total_steps_for(spec, 10, 3) == 3
    spec.training.max_steps = 2
    assert total_steps_for(spec, 10, None) == 2


# --------------------------------------------------------------------------- packing and schedules


def test_pack_aligns_response_logprob_positions():
    mb = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert mb.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # logits at position p-1+j predict response token j
    assert mb.resp_index.tolist() == [[2, 3, 0], [0, 1, 2]]
    assert mb.response_ids.tolist() == [[5, 6, 0], [7, 8, 9]]
    assert mb.action_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    full = torch.arange(10.0).reshape(2, 5)
    assert mb.with_fields(advantages=full).advantages.shape == (2, 3)
    assert dummy(0).num_tokens == 0
    assert pad_rows([[1.0], [2.0, 3.0]]).tolist() == [[1.0, 0.0], [2.0, 3.0]]


def test_forward_schedule_gives_every_worker_the_same_number_of_micro_batches():
    schedule = forward_schedule(7, micro=2, workers=2)
    assert [len(w) for w in schedule] == [2, 2]
    assert sorted(i for w in schedule for mb in w for i in mb) == list(range(7))


def test_train_schedule_steps_every_worker_together():
    schedule = train_schedule(samples=10, train_batch=8, micro=2, workers=2, epochs=2, seed=0)
    # two optimizer steps per epoch (8 + 2 samples), accumulation 8 / (2 * 2) = 2 micro-batches each
    assert [len(w) for w in schedule] == [4, 4]
    assert all(len(step) == 2 for w in schedule for step in w)
    for epoch in range(2):
        seen = sorted(i for w in schedule for step in w[2 * epoch:2 * epoch + 2] for mb in step for i in mb)
        assert seen == list(range(10))
    assert schedule == train_schedule(10, 8, 2, 2, 2, seed=0)


# --------------------------------------------------------------------------- transformers engine


def test_transformers_engine_samples_with_logprobs_and_reloads_weights(tiny_model):
    from transformers import AutoModelForCausalLM

    engine = TransformersEngine(str(tiny_model), seed=0)
    out = engine.generate([[104, 105], [1, 2, 3]], SamplingConfig(n=3, max_new_tokens=6))
    assert len(out) == 2 and all(len(g) == 3 for g in out)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for prompt, gens in zip([[104, 105], [1, 2, 3]], out):
        for g in gens:
            assert len(g.token_ids) == len(g.logprobs) <= 6
            seq = torch.tensor([prompt + g.token_ids])
            with torch.no_grad():
                lp = ref(seq).logits[0, len(prompt) - 1:-1].log_softmax(-1)
            expected = lp.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
            assert torch.allclose(expected, torch.tensor(g.logprobs), atol=1e-4)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1)
    engine.load_weights(ref.state_dict().items())
    assert torch.equal(engine.model.lm_head.weight, ref.lm_head.weight)
    greedy = engine.generate([[104, 105]], SamplingConfig(n=1, max_new_tokens=5, temperature=0.0))[0][0]
    with torch.no_grad():
        hf = ref.generate(torch.tensor([[104, 105]]), do_sample=False, max_new_tokens=5, eos_token_id=None)
    assert greedy.token_ids == hf[0, 2:].tolist()[:len(greedy.token_ids)]


def test_top_k_top_p_filter():
    logp = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), -1)
    assert torch.isinf(_filter(logp, 2, 1.0)).tolist() == [[False, False, True, True]]
    kept = ~torch.isinf(_filter(logp, -1, 0.7))
    assert kept.tolist() == [[True, True, False, False]]


# --------------------------------------------------------------------------- checkpoints, metrics, progress


def test_checkpoints_commit_rotate_and_ignore_partial(tmp_path):
    ckpts = Checkpoints(tmp_path, max_keep=2)
    assert ckpts.latest() is None
    for step in (2, 4, 6):
        ckpts.path_for(step).mkdir(parents=True)
        ckpts.commit(step, {"data": {"episode": 0, "offset": step}})
    ckpts.path_for(8).mkdir()  # a save killed half-way: no state.json
    assert [c.step for c in ckpts.complete()] == [4, 6]
    assert ckpts.latest().state["data"]["offset"] == 6 and ckpts.latest().tag == "step_000006"


def test_metrics_log_drops_rows_after_the_resumed_step(tmp_path):
    spec = SimpleNamespace(tensorboard=True, wandb=None)
    log = MetricsLog(tmp_path, spec, job_name="t")
    for step in (1, 2, 3):
        log.log({"step": step, "reward/mean": step / 10, "score/mean": 0.5, "nan": float("nan")})
    log.close()
    assert list((tmp_path / "tensorboard").iterdir())
    resumed = MetricsLog(tmp_path, SimpleNamespace(tensorboard=False, wandb=None), job_name="t", resume_step=2)
    resumed.log({"step": 3, "reward/mean": 0.9, "score/mean": 0.5})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["reward/mean"] == 0.9 and rows[0]["nan"] is None
    assert plot_reward_curve(rows, tmp_path / "curve.png").stat().st_size > 1000


def test_progress_endpoint_serves_the_report():
    server = ProgressServer(0, host="127.0.0.1")
    try:
        server.update(state="training", step=3, total_steps=10, reward_mean=0.25)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/progress", timeout=5) as response:
            report = ProgressReport.from_json(response.read())
        assert (report.state, report.step, report.total_steps, report.reward_mean) == ("training", 3, 10, 0.25)
        assert report.heartbeat.endswith("Z")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    finally:
        server.close()


# --------------------------------------------------------------------------- local job preparation


JOB = """
apiVersion: rlhf.dev/v1alpha1
kind: RLHFJob
metadata:
  name: local
  annotations: {{rlhf.dev/create-tiny-model: "true"}}
spec:
  model: {{path: model}}
  data: {{prompts: prompts.jsonl}}
  reward:
    function: {reward}
"""


def _job(tmp_path, reward: str) -> Path:
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"input": "hi"}) + "\n")
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(reward=reward))
    return path


def test_local_config_resolves_paths_and_creates_the_tiny_model(tmp_path):
    from rlhf_workers.local import prepare_local_config

    (tmp_path / "r.py").write_text("def reward_func(q, p, l):\n    return {'rewards': [0.0] * len(q)}\n")
    config = prepare_local_config(str(_job(tmp_path, "{path: r.py}")), str(tmp_path / "out"))
    assert config.spec.model.path == str(tmp_path / "model") and (tmp_path / "model" / "config.json").is_file()
    assert config.spec.data.prompts == str(tmp_path / "prompts.jsonl")
    assert config.reward_code_path == str(tmp_path / "r.py")
    assert config.output_dir == str(tmp_path / "out") and config.progress_port == 0


def test_local_config_inline_and_configmap_code(tmp_path):
    from rlhf_workers.local import prepare_local_config

    inline = "{inline: \"def reward_func(q, p, l):\\n    return {'rewards': [1.0] * len(q)}\\n\"}"
    config = prepare_local_config(str(_job(tmp_path, inline)), str(tmp_path / "out"))
    assert "[1.0]" in Path(config.reward_code_path).read_text()
    job = _job(tmp_path, "{configMapRef: {name: my-reward}}")
    with pytest.raises(ValueError, match="pass --configmap my-reward=FILE"):
        prepare_local_config(str(job), str(tmp_path / "out"))
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(textwrap.dedent("""
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: my-reward}
        data:
          reward_func.py: |
            def reward_func(q, p, l):
                return {'rewards': [2.0] * len(q)}
    """))
    config = prepare_local_config(str(job), str(tmp_path / "out"), {"my-reward": str(manifest)})
    assert "[2.0]" in Path(config.reward_code_path).read_text()
    source = tmp_path / "mine.py"  # a source file stands for the ConfigMap's key
    source.write_text("def reward_func(q, p, l):\n    return {'rewards': [3.0] * len(q)}\n")
    config = prepare_local_config(str(job), str(tmp_path / "out"), {"my-reward": "mine.py"})
    assert "[3.0]" in Path(config.reward_code_path).read_text()
    manifest.write_text(manifest.read_text().replace("reward_func.py:", "other.py:"))
    with pytest.raises(ValueError, match="has no key 'reward_func.py' \\(it has: other.py\\)"):
        prepare_local_config(str(job), str(tmp_path / "out"), {"my-reward": str(manifest)})


def test_run_local_exit_codes_for_unusable_jobs(tmp_path, capsys):
    from rlhf_workers.local import run_local

    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata: {name: x}\nspec: {model: {path: m}}\n")
    assert run_local(str(bad), str(tmp_path / "out"), quiet=True) == 2
    assert "spec.data" in capsys.readouterr().err
    job = _job(tmp_path, "{path: missing.py}")
    assert run_local(str(job), str(tmp_path / "out"), quiet=True) == 2
    assert "missing.py does not exist" in capsys.readouterr().err


def test_openrlhf_agent_import_alias():
    from rlhf_workers.agent import AgentExecutorBase, AgentInstanceBase, install_openrlhf_alias

    install_openrlhf_alias()
    from openrlhf.utils.agent import AgentExecutorBase as E, AgentInstanceBase as I  # noqa: N817

    assert (E, I) == (AgentExecutorBase, AgentInstanceBase)


# --------------------------------------------------------------------------- agents


AGENT_FILE = '''
import torch
from openrlhf.utils.agent import AgentExecutorBase, AgentInstanceBase


class AgentInstance(AgentInstanceBase):
    async def __init__(self, *args, **kwargs):  # async, as OpenRLHF's examples write it
        self.turn = 0

    async def reset(self, states, **kwargs):
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        self.turn += 1
        done = self.turn == 2
        return {"rewards": torch.tensor([0.25 * self.turn]), "scores": torch.tensor([0.5]),
                "environment_feedback": "" if done else "FB", "done": done,
                "sampling_params": states["sampling_params"], "extra_logs": {"turns": self.turn}}


class AgentExecutor(AgentExecutorBase):
    def __init__(self, max_steps, max_length, llm_engine, hf_tokenizer, result_queue):
        super().__init__(AgentInstance, max_steps, max_length, llm_engine, hf_tokenizer, result_queue)
'''


class FakeEngine:
    """Answers every request with the bytes of 'ab' and logprob -1 each."""

    def __init__(self):
        self.requests = []

    async def generate(self, token_ids, sampling_params):
        from rlhf_workers.agent import _Completion, _Logprob, _RequestOutput

        self.requests.append((list(token_ids), sampling_params.max_tokens))
        ids = [97, 98]
        return _RequestOutput(list(token_ids), [_Completion(ids, "ab", [{t: _Logprob(-1.0)} for t in ids], "stop")])


def test_agent_episode_masks_environment_feedback_and_sums_rewards(tmp_path, tokenizer):
    import asyncio

    from rlhf_workers.agent import agent_rewards, load_agent, make_sampling_params
    from rlhf_workers.rollout import Sample

    path = tmp_path / "agent_func.py"
    path.write_text(AGENT_FILE)
    executor_cls, instance_cls = load_agent(str(path))
    engine = FakeEngine()
    executor = executor_cls(5, 64, engine, tokenizer, None)
    rollout = SimpleNamespace(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=-1)
    episode = asyncio.run(executor.execute("Q:", "7", make_sampling_params(rollout)))
    prompt = list(b"Q:")
    assert episode["observation_tokens"] == prompt + [97, 98] + list(b"FB") + [97, 98]
    assert episode["action_mask"] == [1, 1, 0, 0, 1, 1]
    assert episode["rollout_log_probs"] == [-1.0, -1.0, 0.0, 0.0, -1.0, -1.0]
    assert episode["reward"] == pytest.approx(0.75) and episode["scores"] == 0.5 and episode["steps"] == 2
    assert engine.requests[1] == (prompt + [97, 98] + list(b"FB"), 8)
    sample = Sample(prompt, episode["observation_tokens"][2:], episode["rollout_log_probs"], False,
                    mask=episode["action_mask"], reward=episode["reward"], score=episode["scores"], info=episode["extra_logs"])
    result = agent_rewards([sample])
    assert result.rewards.tolist() == [0.75] and result.extra_logs == {"turns": 2.0}
    mb = pack([sample.prompt_ids], [sample.response_ids], 0, [sample.mask])
    assert mb.action_mask.tolist() == [[1, 1, 0, 0, 1, 1]]


def test_agent_contract_errors_are_readable(tmp_path, tokenizer):
    import asyncio

    from rlhf_workers.agent import AgentError, load_agent, make_sampling_params

    path = tmp_path / "agent_func.py"
    path.write_text(AGENT_FILE.replace('"done": done,', ''))
    executor_cls, _ = load_agent(str(path))
    rollout = SimpleNamespace(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=-1)
    with pytest.raises(AgentError, match="without done"):
        asyncio.run(executor_cls(5, 64, FakeEngine(), tokenizer, None).execute("Q:", "7", make_sampling_params(rollout)))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(AgentError, match="neither AgentExecutor nor AgentInstance"):
        load_agent(str(tmp_path / "empty.py"))


def test_an_episode_cut_to_one_turn_by_the_token_budget_is_counted_and_warned_once(tmp_path, tokenizer, caplog):
    from rlhf_workers.agent import AgentRunner

    path = tmp_path / "agent_func.py"
    path.write_text(AGENT_FILE)  # done after its second turn
    rollout = SimpleNamespace(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=-1)
    prompts = [SimpleNamespace(text="Q:", label="7")] * 3

    def runner(max_length):
        r = AgentRunner(str(path), cluster=None, tokenizer=tokenizer, max_steps=5, max_length=max_length,
                        rollout_spec=rollout)
        r.client = FakeEngine()
        return r

    roomy = runner(64)  # room for both turns
    roomy.run(prompts, 1)
    assert roomy.take_episode_stats() == {"agent/turns_mean": 2.0, "agent/cut_to_one_turn": 0}

    tight = runner(4)  # "Q:" + the first action's two tokens spend the budget
    with caplog.at_level("WARNING", logger="rlhf_workers.agent"):
        tight.run(prompts, 1)
        assert tight.take_episode_stats() == {"agent/turns_mean": 1.0, "agent/cut_to_one_turn": 3}
        tight.run(prompts, 1)
        assert tight.take_episode_stats()["agent/cut_to_one_turn"] == 3
    warnings = [r.getMessage() for r in caplog.records if "single turn" in r.getMessage()]
    assert len(warnings) == 1 and "= 4 tokens" in warnings[0] and "agent.maxSteps = 5" in warnings[0]
    assert tight.take_episode_stats() == {}  # nothing since the last call
