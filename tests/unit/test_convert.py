"""`rlhf convert`: OpenRLHF train_ppo_ray commands of both flag generations become RLHFJobs
that `rlhf validate` accepts and that mean the same training."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_cli.cli import main
from rlhf_cli.openrlhf_flags import BY_NAME, FLAGS, UNSET, flag_table_markdown

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "openrlhf"

REWARD = ("import torch\n\n\ndef reward_func(queries, prompts, labels):\n"
          "    return {'rewards': torch.zeros(len(queries)), 'scores': torch.zeros(len(queries))}\n")
# OpenRLHF's agent API without the `openrlhf` import, which `rlhf validate` refuses on the default
# worker image (rlhf_api.imports); the conversion itself does not look at the imports.
AGENT = ("class AgentInstance:\n"
         "    async def reset(self, states, **kwargs):\n        return {'observation': states['observation']}\n\n"
         "    async def step(self, states, **kwargs):\n        return {'rewards': 0.0, 'done': True}\n\n\n"
         "class AgentExecutor:\n    pass\n")

# The training commands of OpenRLHF's custom-reward guide (../shared/seed/custom-reward-functions.md),
# as written there: continuation lines and a trailing comment.
SEED = {
    "code": """ray job submit --address="http://127.0.0.1:8265" \\
  -- python3 -m openrlhf.cli.train_ppo_ray \\
  --remote_rm_url ./reward_func_code_gen.py \\
  --label_key test_cases \\
  --pretrain codellama/CodeLlama-7b-Instruct-hf \\
  --prompt_data code-generation-dataset \\
  --advantage_estimator reinforce \\
  # ... other args
""",
    "math": """ray job submit --address="http://127.0.0.1:8265" \\
  -- python3 -m openrlhf.cli.train_ppo_ray \\
  --remote_rm_url ./reward_func_math.py \\
  --label_key answers \\
  --pretrain deepseek-ai/deepseek-math-7b-base \\
  --prompt_data gsm8k \\
  --advantage_estimator reinforce_baseline \\
  --n_samples_per_prompt 4 \\
  # ... other args
""",
    "conversation": """ray job submit --address="http://127.0.0.1:8265" \\
  -- python3 -m openrlhf.cli.train_ppo_ray \\
  --remote_rm_url ./reward_func_conversation.py \\
  --pretrain meta-llama/Llama-3-8b-Instruct \\
  --prompt_data OpenAssistant/oasst1 \\
  --advantage_estimator gae \\
  # ... other args
""",
    "agent": """ray job submit --address="http://127.0.0.1:8265" \\
  -- python3 -m openrlhf.cli.train_ppo_ray \\
  --async_train \\
  --agent_func_path ./agent_func_math.py \\
  --label_key answers \\
  --pretrain deepseek-ai/deepseek-math-7b-base \\
  --prompt_data gsm8k \\
  --advantage_estimator reinforce \\
  --max_steps 3 \\
  # ... other args
""",
}

# The same commands in OpenRLHF 0.10.2's dotted flags (--max_steps has no dotted form).
DOTTED = {
    "--remote_rm_url": "--reward.remote_url", "--label_key": "--data.label_key",
    "--pretrain": "--actor.model_name_or_path", "--prompt_data": "--data.prompt_dataset",
    "--advantage_estimator": "--algo.advantage.estimator", "--n_samples_per_prompt": "--rollout.n_samples_per_prompt",
    "--async_train": "--train.async_enable", "--agent_func_path": "--train.agent_func_path",
}


def dotted(command: str) -> str:
    return re.sub(r"--[a-z_]+(?= |$)", lambda m: DOTTED.get(m.group(0), m.group(0)), command, flags=re.M)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name in ("reward_func_code_gen.py", "reward_func_math.py", "reward_func_conversation.py", "reward.py"):
        (tmp_path / name).write_text(REWARD)
    (tmp_path / "agent_func_math.py").write_text(AGENT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys, monkeypatch, *argv, stdin=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def convert(capsys, monkeypatch, command: str, *options):
    code, out, err = run(capsys, monkeypatch, "convert", *options, "-f", "-", stdin=command)
    return code, [d for d in yaml.safe_load_all(out) if d], err


def validate(capsys, monkeypatch, tmp_path, documents, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    code, out, err = run(capsys, monkeypatch, "validate", path)
    assert code == 0, err
    return out


@pytest.mark.parametrize("case", sorted(SEED))
@pytest.mark.parametrize("generation", ["flat", "dotted"])
def test_seed_commands_convert_completely_and_validate(workdir, capsys, monkeypatch, case, generation):
    command = SEED[case] if generation == "flat" else dotted(SEED[case])
    code, documents, err = convert(capsys, monkeypatch, command, "--inline")
    assert code == 0, err
    assert "complete" in err.splitlines()[-1]
    assert "ok: " in validate(capsys, monkeypatch, workdir, documents)
    (job,) = documents
    spec = job["spec"]
    if case == "agent":
        assert spec["agent"]["inline"] == AGENT and spec["agent"]["maxSteps"] == 3
        assert spec["algorithm"]["async"]["enabled"] is True and "reward" not in spec
    else:
        assert spec["reward"]["function"]["inline"] == REWARD
        assert spec["reward"]["clipRange"] == [-10.0, 10.0]  # OpenRLHF's default clip, kept
    expected = {"code": ("codellama/CodeLlama-7b-Instruct-hf", "code-generation-dataset", "test_cases", "reinforce"),
                "math": ("deepseek-ai/deepseek-math-7b-base", "gsm8k", "answers", "reinforce_baseline"),
                "conversation": ("meta-llama/Llama-3-8b-Instruct", "OpenAssistant/oasst1", None, "gae"),
                "agent": ("deepseek-ai/deepseek-math-7b-base", "gsm8k", "answers", "reinforce")}[case]
    assert (spec["model"]["path"], spec["data"]["prompts"], spec["data"].get("labelKey"),
            spec["algorithm"]["advantageEstimator"]) == expected
    assert spec["algorithm"].get("nSamplesPerPrompt", 1) == (4 if case == "math" else 1)


@pytest.mark.parametrize("case", sorted(SEED))
def test_flat_and_dotted_generations_give_the_same_job(workdir, capsys, monkeypatch, case):
    flat = convert(capsys, monkeypatch, SEED[case], "--configmaps")
    dot = convert(capsys, monkeypatch, dotted(SEED[case]), "--configmaps")
    assert flat[0] == dot[0] == 0
    assert flat[1] == dot[1]
    kinds = [d["kind"] for d in flat[1]]
    assert kinds == ["ConfigMap", "RLHFJob"]  # ConfigMaps first, so `kubectl apply -f` creates them first
    configmap, job = flat[1]
    ref = (job["spec"].get("reward", {}).get("function") or job["spec"]["agent"])["configMapRef"]
    assert configmap["metadata"]["name"] == ref["name"] and ref["key"] in configmap["data"]
    validate(capsys, monkeypatch, workdir, flat[1])
    # The operator's rendering takes it too, with the ConfigMap's code in the snapshot.
    (workdir / "cm.yaml").write_text(yaml.safe_dump(configmap))
    (workdir / "job-only.yaml").write_text(yaml.safe_dump(job))
    code, out, err = run(capsys, monkeypatch, "render", workdir / "job-only.yaml", "--configmap", f"{ref['name']}=cm.yaml")
    assert code == 0, err
    snapshot = next(yaml.safe_load_all(out))
    assert configmap["data"][ref["key"]] in snapshot["data"].values()


KEY_FLAGS = [
    # (flat, dotted, spec path, value on the command line, value in the job)
    ("--init_kl_coef", "--algo.kl.init_coef", "algorithm.kl.coef", "0.001", 0.001),
    ("--kl_estimator", "--algo.kl.estimator", "algorithm.kl.estimator", "k3", "k3"),
    ("--use_kl_loss", "--algo.kl.use_loss", "algorithm.kl.useLoss", None, True),
    ("--dynamic_filtering", "--algo.dynamic_filtering_enable", "algorithm.dynamicFiltering.enabled", None, True),
    ("--dynamic_filtering_reward_range", "--algo.dynamic_filtering_range", "algorithm.dynamicFiltering.scoreRange",
     "0.01 0.99", [0.01, 0.99]),
    ("--actor_learning_rate", "--actor.adam.lr", "training.learningRate", "5e-7", 5e-7),
    ("--critic_learning_rate", "--critic.adam.lr", "training.criticLearningRate", "9e-6", 9e-6),
    ("--zero_stage", "--ds.zero_stage", "training.zeroStage", "3", 3),
    ("--rollout_batch_size", "--rollout.batch_size", "training.rolloutBatchSize", "64", 64),
    ("--train_batch_size", "--train.batch_size", "training.trainBatchSize", "256", 256),
    ("--micro_train_batch_size", "--train.micro_batch_size", "training.microBatchSize", "4", 4),
    ("--num_episodes", "--train.num_episodes", "training.episodes", "3", 3),
    ("--save_steps", "--ckpt.save_steps", "checkpoint.saveSteps", "20", 20),
    ("--ckpt_path", "--ckpt.path", "checkpoint.path", "/ckpt/run1", "/ckpt/run1"),
    ("--max_ckpt_num", "--ckpt.max_num", "checkpoint.maxKeep", "5", 5),
    ("--temperature", "--rollout.temperature", "rollout.temperature", "0.7", 0.7),
    ("--top_p", "--rollout.top_p", "rollout.topP", "0.9", 0.9),
    ("--max_new_tokens", "--rollout.max_new_tokens", "rollout.maxNewTokens", "512", 512),
    ("--input_key", "--data.input_key", "data.inputKey", "question", "question"),
    ("--apply_chat_template", "--data.apply_chat_template", "data.applyChatTemplate", None, True),
    ("--seed", "--train.seed", "training.seed", "7", 7),
    ("--vllm_tensor_parallel_size", "--vllm.tensor_parallel_size", "rollout.tensorParallelSize", "2", 2),
    ("--use_tensorboard", "--logger.tensorboard_dir", "logging.tensorboard", "/logs/tb", True),
    ("--param_dtype", "--ds.param_dtype", "training.bf16", "fp32", False),
]


def at(spec, path):
    for part in path.split("."):
        spec = spec[part]
    return spec


@pytest.mark.parametrize("generation", [0, 1], ids=["flat", "dotted"])
def test_each_key_flag_lands_in_its_field_with_its_meaning(workdir, capsys, monkeypatch, generation):
    words = ["python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/models/q", "--remote_rm_url", "reward.py",
             "--prompt_data", "/data/p.jsonl",
             "--advantage_estimator", "group_norm", "--n_samples_per_prompt", "8", "--vllm_num_engines", "2"]
    for row in KEY_FLAGS:
        words += [row[generation], *(row[3].split() if row[3] else [])]
    code, out, err = run(capsys, monkeypatch, "convert", "-o", "json", "--", *words)
    assert code == 0, err
    spec = json.loads(out)["spec"]
    for row in KEY_FLAGS:
        assert at(spec, row[2]) == row[4], row


def test_resource_flags_become_cluster_groups(workdir, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "convert", "--", "python3", "-m", "openrlhf.cli.train_ppo_ray",
                         "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "http://rm.svc:5000/get_reward",
                         "--actor_num_nodes", "2", "--actor_num_gpus_per_node", "4",
                         "--vllm_num_engines", "3", "--vllm_tensor_parallel_size", "2", "--ref_num_nodes", "1")
    assert code == 0, err
    spec = yaml.safe_load(out)["spec"]
    assert spec["training"]["trainers"] == 8
    assert spec["cluster"]["trainer"] == {"replicas": 2, "gpus": 4}
    assert spec["rollout"]["engines"] == 3 and spec["rollout"]["tensorParallelSize"] == 2
    rollout = spec["cluster"]["rollout"]
    assert rollout["replicas"] * rollout["gpus"] >= 6 and rollout["gpus"] % 2 == 0  # every engine's GPUs on one pod
    assert spec["reward"] == {"remote": {"url": "http://rm.svc:5000/get_reward"}, "clipRange": [-10.0, 10.0]}
    assert "--ref_num_nodes: ignored" in err


def test_colocate_all_models_and_no_vllm_engines_mean_a_colocated_job(workdir, capsys, monkeypatch):
    base = ["python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "reward.py"]
    code, out, _ = run(capsys, monkeypatch, "convert", "--", *base, "--colocate_all_models", "--vllm_num_engines", "8")
    spec = yaml.safe_load(out)["spec"]
    assert code == 0 and spec["cluster"]["placement"] == "colocated" and spec["cluster"]["rollout"]["replicas"] == 0
    code, out, err = run(capsys, monkeypatch, "convert", "--", *base)
    spec = yaml.safe_load(out)["spec"]
    assert code == 0 and spec["rollout"]["backend"] == "transformers" and spec["cluster"]["placement"] == "colocated"
    assert "no vLLM engines" in err
    # Asynchronous training cannot share processes: OpenRLHF colocates only the trainers then.
    code, out, err = run(capsys, monkeypatch, "convert", "--", *base, "--async_train", "--colocate_all_models",
                         "--vllm_num_engines", "2")
    spec = yaml.safe_load(out)["spec"]
    assert code == 0 and "placement" not in spec["cluster"] and spec["cluster"]["rollout"]["replicas"] >= 1
    assert "--colocate_all_models: ignored: with --async_train" in err


def test_reward_model_becomes_a_model_reward_and_the_gae_critic(workdir, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "convert", "--", "python3", "-m", "openrlhf.cli.train_ppo_ray",
                         "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--reward_pretrain", "OpenRLHF/rm-7b", "--normalize_reward")
    assert code == 0, err
    spec = yaml.safe_load(out)["spec"]
    assert spec["reward"]["model"] == {"path": "OpenRLHF/rm-7b", "normalize": True}
    assert spec["model"]["criticPath"] == "OpenRLHF/rm-7b"  # OpenRLHF's gae critic starts from the reward model


def test_wandb_key_is_never_written_and_becomes_a_secret_reference(workdir, capsys, monkeypatch):
    secret = "0123456789abcdef-wandb-key"
    code, out, err = run(capsys, monkeypatch, "convert", "--name", "math", "--", "python3", "-m",
                         "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "reward.py",
                         "--use_wandb", secret, "--wandb_project", "rft", "--wandb_run_name", "r1")
    assert code == 0, err
    assert secret not in out and secret not in err
    wandb = yaml.safe_load(out)["spec"]["logging"]["wandb"]
    assert wandb == {"project": "rft", "apiKeySecretRef": {"name": "math-wandb", "key": "WANDB_API_KEY"}, "runName": "r1"}
    assert "kubectl create secret generic math-wandb --from-literal=WANDB_API_KEY=<your key>" in err


def test_unknown_and_unmappable_flags_are_named_and_the_exit_code_says_incomplete(workdir, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "convert", "--", "VLLM_USE_V1=1", "python3", "-m",
                         "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "reward.py",
                         "--lora_rank", "16", "--made_up_flag", "x", "--packing_samples")
    assert code == 3
    assert yaml.safe_load(out)["kind"] == "RLHFJob"  # still printed, and valid
    assert "--lora_rank: not converted: LoRA is not supported" in err
    assert "--made_up_flag x: not converted" in err
    assert "environment variable VLLM_USE_V1" in err
    assert "--packing_samples: ignored" in err
    assert err.splitlines()[-1].startswith("rlhf convert: incomplete: 3 part(s)")


@pytest.mark.parametrize("launcher, trainers", [
    (["deepspeed", "--num_gpus", "4", "--module", "openrlhf.cli.train_ppo"], 4),
    (["torchrun", "--nproc_per_node=2", "--nnodes", "4", "-m", "openrlhf.cli.train_ppo_ray"], 8),
    (["python3", "openrlhf/cli/train_ppo_ray.py", "--actor_num_gpus_per_node", "1"], 1),
])
def test_launchers_are_read_for_the_trainer_count(workdir, capsys, monkeypatch, launcher, trainers):
    code, out, err = run(capsys, monkeypatch, "convert", "--", *launcher, "--pretrain", "/m",
                         "--prompt_data", "/p.jsonl", "--remote_rm_url", "reward.py")
    assert code == 0, err
    assert yaml.safe_load(out)["spec"]["training"]["trainers"] == trainers


def test_refusals_exit_2_and_print_nothing(workdir, capsys, monkeypatch):
    cases = {
        ("python3", "-m", "openrlhf.cli.train_sft", "--pretrain", "/m"): "is not RL training",
        ("python3", "train.py", "--pretrain", "/m"): "found no OpenRLHF trainer",
        ("python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "d"): "names no reward",
        ("python3", "-m", "openrlhf.cli.train_ppo_ray", "--remote_rm_url", "r.py"): "names no model",
        ("python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--remote_rm_url", "r.py"): "no prompt data",
        ("python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "reward.py",
         "--n_samples_per_prompt", "many"): "--n_samples_per_prompt expects a whole number",
        ("python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "reward.py",
         "--advantage_estimator", "group_norm"): "nSamplesPerPrompt: must be >= 2",
    }
    for words, message in cases.items():
        code, out, err = run(capsys, monkeypatch, "convert", "--", *words)
        assert (code, out) == (2, ""), (words, err)
        assert message in err, (message, err)


def test_a_reward_file_that_cannot_be_read_exits_1_when_its_code_is_needed(workdir, capsys, monkeypatch):
    words = ["python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "missing.py"]
    code, out, err = run(capsys, monkeypatch, "convert", "--inline", "--", *words)
    assert (code, out) == (1, "") and "missing.py: cannot read" in err
    code, out, err = run(capsys, monkeypatch, "convert", "--", *words)  # a ConfigMap reference needs no file
    assert code == 0 and "kubectl create configmap" in err


def test_working_dir_of_ray_job_submit_is_where_relative_files_are_read(workdir, capsys, monkeypatch):
    (workdir / "proj").mkdir()
    (workdir / "proj" / "rf.py").write_text(REWARD)
    code, out, err = run(capsys, monkeypatch, "convert", "--inline", "--", "ray", "job", "submit", "--working-dir",
                         "proj", "--", "python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m",
                         "--prompt_data", "/p.jsonl", "--remote_rm_url", "rf.py")
    assert code == 0, err
    assert yaml.safe_load(out)["spec"]["reward"]["function"]["inline"] == REWARD


# ---- the table itself

def flag_names(file: str) -> list[str]:
    return [line for line in (DATA / file).read_text().splitlines() if line.startswith("--")]


@pytest.mark.parametrize("file", ["train_ppo_ray_v0.7-v0.10.1.txt", "train_ppo_ray_v0.10.1.txt",
                                  "train_ppo_ray_v0.11.0.txt"])
def test_every_flag_of_both_openrlhf_generations_has_a_row(file):
    names = flag_names(file)
    assert len(names) > 130
    assert [n for n in names if n not in BY_NAME] == []


def test_openrlhf_defaults_written_by_convert_differ_from_the_rlhfjob_defaults():
    """A default is written only where leaving the field out would train differently."""
    from rlhf_api.validation import parse_spec

    ours = parse_spec({"model": {"path": "/m"}, "data": {"prompts": "/p"},
                       "reward": {"remote": {"url": "http://x"}}}).dump()
    for flag in FLAGS:
        if flag.status == "mapped" and flag.openrlhf_default is not UNSET:
            assert at(ours, flag.field) != flag.openrlhf_default, flag


def test_docs_flag_table_is_the_one_the_code_uses(capsys, monkeypatch):
    doc = (ROOT / "docs" / "convert.md").read_text()
    start, end = "<!-- flag-table: generated by `rlhf convert --table` -->\n", "<!-- end flag-table -->"
    assert start in doc and end in doc
    assert doc.split(start, 1)[1].split(end, 1)[0] == flag_table_markdown()
    code, out, _ = run(capsys, monkeypatch, "convert", "--table")
    assert code == 0 and out == flag_table_markdown()


def test_a_script_sets_the_variables_its_command_uses(workdir, capsys, monkeypatch):
    script = """#!/bin/bash
set -x
export MODEL=deepseek-ai/deepseek-math-7b-base
DATA=gsm8k SAVE=/ckpt/${DATA}
ray job submit --address="http://127.0.0.1:8265" \\
   -- python3 -m openrlhf.cli.train_ppo_ray \\
   --pretrain $MODEL --prompt_data ${DATA},more_prompts \\
   --remote_rm_url ./reward.py --save_path $SAVE \\
   --wandb_run_name $RUN --input_template "no slot here" \\
   --n_samples_per_prompt=4 --advantage_estimator group_norm
"""
    code, documents, err = convert(capsys, monkeypatch, script)
    assert code == 3, err
    spec = documents[0]["spec"]
    assert spec["model"]["path"] == "deepseek-ai/deepseek-math-7b-base"
    assert spec["data"] == {"prompts": "gsm8k"} and spec["checkpoint"]["path"] == "/ckpt/gsm8k"
    assert spec["algorithm"]["nSamplesPerPrompt"] == 4  # --flag=value
    assert "--prompt_data: not converted: one prompt source per job; used gsm8k, not more_prompts" in err
    assert "--wandb_run_name $RUN: not converted: a shell variable" in err
    assert "--input_template: ignored: it has no '{}'" in err
    validate(capsys, monkeypatch, workdir, documents)


def test_a_script_with_two_trainers_or_an_unknown_model_variable_is_refused(workdir, capsys, monkeypatch):
    one = "python3 -m openrlhf.cli.train_ppo_ray --pretrain /m --prompt_data d --remote_rm_url reward.py\n"
    code, documents, err = convert(capsys, monkeypatch, one + one)
    assert (code, documents) == (2, []) and "runs 2 OpenRLHF commands" in err
    code, documents, err = convert(capsys, monkeypatch, one.replace("/m", "$MODEL_PATH"))
    assert (code, documents) == (2, []) and "--pretrain $MODEL_PATH: a shell variable" in err


def test_the_seed_commands_here_are_the_guides_own():
    guide = ROOT.parent / "shared" / "seed" / "custom-reward-functions.md"
    if not guide.is_file():
        pytest.skip("OpenRLHF's custom-reward guide is not beside this checkout")
    blocks = re.findall(r"```bash\n(.*?)```", guide.read_text(), re.S)
    assert sorted(b for b in blocks if "train_ppo_ray" in b) == sorted(SEED.values())


def test_a_command_with_pre_0_10_flags_gets_that_releases_defaults(workdir, capsys, monkeypatch):
    words = ["python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "/m", "--prompt_data", "/p.jsonl",
             "--remote_rm_url", "reward.py", "--actor_num_gpus_per_node", "2"]
    code, out, _ = run(capsys, monkeypatch, "convert", "--", *words)
    assert code == 0 and yaml.safe_load(out)["spec"]["training"]["microBatchSize"] == 1  # 0.10's default
    code, out, err = run(capsys, monkeypatch, "convert", "--", *words, "--bf16", "--prompt_max_len", "512",
                         "--generate_max_len", "256")
    spec = yaml.safe_load(out)["spec"]
    assert code == 0 and spec["training"]["microBatchSize"] == 4 and spec["training"]["bf16"] is True
    assert (spec["rollout"]["promptMaxLen"], spec["rollout"]["maxNewTokens"]) == (512, 256)
    assert "is a flag of OpenRLHF before 0.10" in err


def test_a_localhost_reward_server_gets_a_note_that_pods_cannot_reach_it(workdir, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "convert", "--", "python3", "-m", "openrlhf.cli.train_ppo_ray",
                         "--pretrain", "/m", "--prompt_data", "/p.jsonl", "--remote_rm_url", "http://127.0.0.1:5000/get_reward")
    assert code == 0 and yaml.safe_load(out)["spec"]["reward"]["remote"]["url"] == "http://127.0.0.1:5000/get_reward"
    assert "http://127.0.0.1:5000/get_reward is this machine" in err
