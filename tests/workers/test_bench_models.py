"""bench/bench_models.py builds the benchmark's models at the sizes it claims."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_models():
    spec = importlib.util.spec_from_file_location("bench_models", BENCH / "bench_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_bench_model_has_20_to_30m_parameters_and_head_dim_64(tmp_path):
    bm = _bench_models()
    directory = bm.make_bench_model(tmp_path / "small", "small")
    config = json.loads((directory / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["head_dim"] == 64
    params = bm.parameter_count(directory)
    assert 20e6 <= params <= 30e6, params

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory)  # loads, and the stored count is the model's
    assert sum(p.numel() for p in model.parameters()) == params
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.decode(tokenizer("ab")["input_ids"], skip_special_tokens=True) == "ab"


def test_unknown_bench_model_size_is_refused_with_the_choices(tmp_path):
    bm = _bench_models()
    with pytest.raises(ValueError, match="tiny, small"):
        bm.make_bench_model(tmp_path / "x", "huge")
    assert not (tmp_path / "x").exists()
