"""Every checkpoint holds a Hugging Face-format model that transformers loads as it is, with a
model card naming the job, step and reward, covered by the checkpoint's manifest; the prompts
come from a dataset saved with `datasets` (built here, nothing downloaded).

One short real run (embedded Ray, DeepSpeed, transformers rollouts, tiny model) saves after
steps 1 and 2; the intermediate checkpoint is then loaded with AutoModelForCausalLM."""

import json
import os

import pytest

from support.jobs import merge, runnable_spec, write_job

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import datasets
    import ray

    from rlhf_workers.local import run_local
    from rlhf_workers.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("ckpt-models")
    model = make_tiny_model(root / "model")
    prompts = root / "prompts"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(
        [{"prompt": f"Say a {i}:", "target": "a"} for i in range(8)])}).save_to_disk(str(prompts))
    reward = root / "reward_func.py"
    reward.write_text("import torch\n\ndef reward_func(queries, prompts, labels):\n"  # ASCII share: varies within groups
                      "    r = torch.tensor([sum(c.isascii() for c in q[len(p):]) / max(1, len(q) - len(p))\n"
                      "                      for q, p in zip(queries, prompts)])\n"
                      "    return {'rewards': r, 'scores': r}\n")
    spec = merge(runnable_spec(model, prompts, reward), {
        "training": {"maxSteps": 2}, "checkpoint": {"saveSteps": 1, "maxKeep": 3}})
    job = write_job(root, spec, name="ckpt-models")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        assert run_local(str(job), str(root / "out"), quiet=True) == 0
    finally:
        ray.shutdown()
    return root


def test_an_intermediate_checkpoint_loads_with_transformers_and_generates(run_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    hf = run_dir / "out" / "checkpoints" / "step_000001" / "hf"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (hf / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    GenerationConfig.from_pretrained(hf)
    ids = tokenizer("Say a 1:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    # It is the trained policy of that step: not the initial weights, not the next step's.
    start = load_file(run_dir / "model" / "model.safetensors")
    step1 = load_file(hf / "model.safetensors")
    step2 = load_file(run_dir / "out" / "checkpoints" / "step_000002" / "hf" / "model.safetensors")
    assert set(step1) == set(start)
    assert any(not torch.equal(step1[k], start[k]) for k in start)
    assert any(not torch.equal(step1[k], step2[k]) for k in start)


def test_the_model_card_names_the_job_the_step_and_the_reward(run_dir):
    rows = [json.loads(line) for line in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    card = (run_dir / "out" / "checkpoints" / "step_000001" / "hf" / "README.md").read_text()
    assert "ckpt-models" in card and "step 1 of 2" in card, card
    assert f"{rows[0]['reward/mean']:.4f}" in card, card


def test_the_manifest_covers_the_hf_model_and_verification_catches_a_changed_weight(run_dir, tmp_path):
    import shutil

    from rlhf_workers.checkpoint import CheckpointError, verify

    ckpt = run_dir / "out" / "checkpoints" / "step_000001"
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert {"hf/model.safetensors", "hf/config.json", "hf/tokenizer.json", "hf/README.md"} <= set(files)
    copy = tmp_path / "step_000001"
    shutil.copytree(ckpt, copy)
    weights = copy / "hf" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hf/model.safetensors: contents differ"):
        verify(copy)


def test_the_final_model_is_the_last_checkpoints_model(run_dir):
    final = run_dir / "out" / "final_model"
    last = run_dir / "out" / "checkpoints" / "step_000002" / "hf"
    assert (final / "model.safetensors").read_bytes() == (last / "model.safetensors").read_bytes()
    assert "step 2 of 2" in (final / "README.md").read_text()
