"""The reward contract: loading user files, validating what reward_func returns, executors,
the seed's own examples, and the `rlhf test-reward` engine (run_reward_check)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_workers import reward_check
from rlhf_workers.reward import (
    LocalFunctionReward,
    RewardContractError,
    RewardExecutor,
    RewardFunctionError,
    RewardLoadError,
    RewardModelReward,
    RewardResult,
    call_reward_function,
    load_reward_function,
    validate_reward_output,
)

DATA = Path(__file__).parent / "data"
SEED = Path("/work/shared/seed/custom-reward-functions.md")

Q = ["P0: 1+1? A: 2", "P1: 2+2? A: 4", "P2: 3+3? A: six"]
P = ["P0: 1+1? A: ", "P1: 2+2? A: ", "P2: 3+3? A: "]
L = ["2", "4", "6"]


def returning(value):
    def reward_func(queries, prompts, labels):
        return value

    return reward_func


def contract_error(value, n=3) -> RewardContractError:
    with pytest.raises(RewardContractError) as info:
        call_reward_function(returning(value), Q[:n], P[:n], L[:n], source="my_reward.py")
    return info.value


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize(
    "rewards",
    [
        [1.0, 0.0, 0.5],
        (1, 0, 0.5),
        torch.tensor([1.0, 0.0, 0.5]),
        torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64),
        np.array([1.0, 0.0, 0.5]),
        np.array([1.0, 0.0, 0.5], dtype=np.float32),
        [np.float32(1.0), np.float64(0.0), torch.tensor(0.5)],
    ],
    ids=["list", "tuple", "tensor", "float64", "numpy", "numpy32", "mixed-scalars"],
)
def test_rewards_accepted_forms(rewards):
    res = call_reward_function(returning({"rewards": rewards}), Q, P, L)
    assert res.rewards.dtype == torch.float32
    assert res.rewards.tolist() == [1.0, 0.0, 0.5]
    assert torch.equal(res.scores, res.rewards) and not res.scores_given
    assert res.extra_logs == {} and res.warnings == []


def test_integer_and_bool_rewards_are_cast_with_a_warning():
    res = call_reward_function(returning({"rewards": torch.tensor([1, 0, 1])}), Q, P, L)
    assert res.rewards.tolist() == [1.0, 0.0, 1.0]
    assert any("int64" in w for w in res.warnings)
    res = call_reward_function(returning({"rewards": [True, False, True]}), Q, P, L)
    assert res.rewards.tolist() == [1.0, 0.0, 1.0]


def test_scores_returned_and_out_of_range_warns():
    res = call_reward_function(returning({"rewards": [2.0, -1.0, 0.0], "scores": [1, 0, 0.5]}), Q, P, L)
    assert res.scores_given and res.scores.tolist() == [1.0, 0.0, 0.5]
    res = call_reward_function(returning({"rewards": [0.0, 0.0, 0.0], "scores": [0.0, 1.5, 0.0]}), Q, P, L)
    assert any("scores[1]" in w and "outside [0, 1]" in w and "P1: 2+2?" in w for w in res.warnings)


def test_extra_logs_reduction():
    logs = {
        "mean_t": torch.tensor([1.0, 2.0, 3.0]),  # per sample -> mean 2, kept per sample
        "scalar_t": torch.tensor(0.25),
        "flag": True,
        "count": 7,
        "np": np.array([0.0, 1.0]),
        "lst": [1, 2],
        "bools": torch.tensor([True, False, True]),
    }
    res = call_reward_function(returning({"rewards": [0, 0, 0], "extra_logs": logs}), Q, P, L)
    assert res.extra_logs == pytest.approx(
        {"mean_t": 2.0, "scalar_t": 0.25, "flag": 1.0, "count": 7.0, "np": 0.5, "lst": 1.5, "bools": 2 / 3}
    )
    assert all(isinstance(v, float) for v in res.extra_logs.values())
    assert set(res.extra_logs_per_sample) == {"mean_t", "bools"}
    assert res.extra_logs_per_sample["mean_t"].tolist() == [1.0, 2.0, 3.0]
    # OpenRLHF's shape: per-sample tensors for every key
    out = res.to_openrlhf()
    assert out["extra_logs"]["flag"].tolist() == [1.0, 1.0, 1.0]


def test_unknown_keys_warn_but_pass():
    res = call_reward_function(returning({"rewards": [0, 0, 0], "reward_model": "x"}), Q, P, L)
    assert any("reward_model" in w for w in res.warnings)


def test_labels_default_to_empty_strings():
    seen = {}

    def reward_func(queries, prompts, labels):
        seen["labels"] = labels
        return {"rewards": [0.0] * len(queries)}

    call_reward_function(reward_func, Q, P)
    assert seen["labels"] == ["", "", ""]


# --------------------------------------------------------------------------- violations


def test_bare_tensor_is_an_error_that_says_what_to_return():
    err = contract_error(torch.tensor([1.0, 0.0, 0.5]))
    msg = str(err)
    assert "torch.Tensor" in msg and "instead of a dict" in msg and '{"rewards"' in msg
    assert "my_reward.py" in msg
    assert "a list of length 3" in str(contract_error([1.0, 0.0, 0.5]))
    assert "instead of a dict" in str(contract_error(1.0))
    assert "must return a dict" in str(contract_error(None))


def test_missing_rewards_key():
    msg = str(contract_error({"scores": [0, 0, 0]}))
    assert 'without the required key "rewards"' in msg and "['scores']" in msg
    msg = str(contract_error({"reward": [0, 0, 0]}))
    assert "it has 'reward'" in msg


@pytest.mark.parametrize(
    "rewards, expected",
    [
        ([1.0, 2.0], r"`rewards` has length 2 but the batch has 3 queries"),
        (torch.zeros(4), r"`rewards` has length 4 but the batch has 3 queries"),
        (torch.zeros(3, 1), r"`rewards` has shape \[3, 1\]; expected a 1-D tensor of shape \[3\] \(use .view"),
        (torch.zeros(2, 3), r"`rewards` has shape \[2, 3\]"),
        ([[1.0], [2.0], [3.0]], r"must be 1-D .* `rewards\[0\]` is a list of length 1"),
        (torch.tensor(1.0), r"0-d \(scalar\) tensor, but the batch has 3 queries"),
        (0.5, r"`rewards` is a single number \(0.5\), but the batch has 3 queries"),
        (["1.0", 2.0, 3.0], r"`rewards\[0\]` is a str .* not a number \(sample 0, prompt 'P0: 1\+1\? A: '\)"),
        ([1.0, None, 3.0], r"`rewards\[1\]` is a NoneType"),
        (np.array(["a", "b", "c"]), r"numpy array of dtype <U1, not numbers"),
        (torch.tensor([1 + 1j, 0j, 0j]), r"dtype torch.complex64, not a real number type"),
        ("good", r"`rewards` is a str"),
        ({"a": 1}, r"`rewards` is a dict"),
    ],
    ids=["short", "long", "2d-column", "2d", "nested-list", "0d", "scalar", "string-item", "none-item",
         "numpy-str", "complex", "string", "dict"],
)
def test_rewards_shape_and_type_violations(rewards, expected):
    err = contract_error({"rewards": rewards})
    assert re.search(expected, str(err)), str(err)


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "+inf"), (float("-inf"), "-inf")])
def test_non_finite_rewards_name_the_sample(bad, word):
    err = contract_error({"rewards": torch.tensor([0.0, bad, 1.0])})
    assert err.sample_index == 1
    msg = str(err)
    assert f"`rewards[1]` is {word}" in msg
    assert "sample 1, prompt 'P1: 2+2? A: '" in msg


def test_non_finite_scores_and_counts():
    err = contract_error({"rewards": [0, 0, 0], "scores": [float("nan"), 0.0, float("nan")]})
    assert err.sample_index == 0
    assert "`scores[0]` is NaN" in str(err) and "2 non-finite values in total" in str(err)


def test_long_prompt_is_truncated_in_the_message():
    prompt = "x" * 500
    with pytest.raises(RewardContractError) as info:
        call_reward_function(returning({"rewards": [float("nan")]}), [prompt + "y"], [prompt], [""])
    msg = str(info.value)
    assert "xxx..." in msg and len(msg) < 400


@pytest.mark.parametrize(
    "logs, expected",
    [
        ([1, 2], r"`extra_logs` is a list of length 2; it must be a dict"),
        ({"name": "abc"}, r"`extra_logs\['name'\]` is a str"),
        ({"t": torch.zeros(0)}, r"`extra_logs\['t'\]` is empty"),
        ({1: 0.5}, r"`extra_logs` key 1 is not a string"),
        ({"n": None}, r"`extra_logs\['n'\]` is a NoneType"),
    ],
)
def test_extra_logs_violations(logs, expected):
    err = contract_error({"rewards": [0, 0, 0], "extra_logs": logs})
    assert re.search(expected, str(err)), str(err)


def test_function_exception_is_wrapped_with_user_traceback():
    def reward_func(queries, prompts, labels):
        return {"rewards": [_parse(lab) for lab in labels]}

    def _parse(label):
        return float(label)

    with pytest.raises(RewardFunctionError) as info:
        call_reward_function(reward_func, Q, P, ["1", "two", "3"], source="my_reward.py")
    err = info.value
    assert err.batch_size == 3
    assert err.exc_type == "ValueError"
    assert "could not convert string to float: 'two'" in err.exc_message
    assert isinstance(err.__cause__, ValueError) and err.original is err.__cause__
    msg = str(err)
    assert "my_reward.py raised ValueError" in msg and "batch of 3 samples" in msg
    assert "in _parse" in err.user_traceback and "return float(label)" in err.user_traceback
    # No frame of the reward package itself: the first frame shown is the user's function.
    assert os.path.join("rlhf_workers", "reward", "") not in err.user_traceback
    assert __file__ in err.user_traceback.split("Traceback")[1].splitlines()[1]
    assert err.sample_index is None


def test_reward_errors_are_distinct_from_low_scores():
    # A very low reward is fine; a crash is an error with a type.
    res = call_reward_function(returning({"rewards": [-1e6, -1e6, -1e6]}), Q, P, L)
    assert res.rewards.min().item() == -1e6
    assert issubclass(RewardFunctionError, Exception) and not issubclass(RewardFunctionError, RewardContractError)


def test_input_length_mismatch_is_a_caller_error():
    with pytest.raises(ValueError, match="equal lengths"):
        call_reward_function(returning({"rewards": []}), Q, P[:2], L)


# --------------------------------------------------------------------------- loading


def write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def test_load_from_path_and_inline_source(tmp_path):
    code = "def reward_func(queries, prompts, labels):\n    return {'rewards': [1.0] * len(queries)}\n"
    fn = load_reward_function(write(tmp_path, "r.py", code))
    assert call_reward_function(fn, Q, P, L).rewards.tolist() == [1.0] * 3
    fn2 = load_reward_function(str(tmp_path / "r.py"))
    assert fn2 is fn  # cached: module body not re-run
    inline = load_reward_function(code.replace("1.0", "0.5"))
    assert call_reward_function(inline, Q, P, L).rewards.tolist() == [0.5] * 3
    assert "reward_func" not in sys.modules or sys.modules["reward_func"] is not None


def test_a_reward_file_imports_a_module_beside_it_without_shadowing_installed_ones(tmp_path):
    (tmp_path / "grading_helpers.py").write_text("SCALE = 0.25\n")
    (tmp_path / "json.py").write_text("raise RuntimeError('a sibling shadowed the standard library')\n")
    code = """
    import json
    from grading_helpers import SCALE

    def reward_func(queries, prompts, labels):
        return {'rewards': [SCALE * len(json.dumps(q)) for q in queries]}
    """
    fn = load_reward_function(write(tmp_path, "sibling_reward.py", code))
    assert call_reward_function(fn, ["ab"], ["a"], None).rewards.tolist() == [1.0]  # len('"ab"') * 0.25


def test_module_level_setup_runs_once(tmp_path):
    counter = tmp_path / "setup.txt"
    code = f"""
        SETUP_COUNT = 0
        with open({str(counter)!r}, "a") as fh:
            fh.write("x")
        SETUP_COUNT += 1

        def reward_func(queries, prompts, labels):
            return {{"rewards": [0.0] * len(queries), "extra_logs": {{"setup_count": SETUP_COUNT}}}}
    """
    path = write(tmp_path, "counted.py", code)
    fn = load_reward_function(path)
    for _ in range(3):
        assert call_reward_function(fn, Q, P, L).extra_logs["setup_count"] == 1.0
    load_reward_function(path)
    LocalFunctionReward(path).score(Q, P, L)
    assert counter.read_text() == "x"
    load_reward_function(path, reload=True)
    assert counter.read_text() == "xx"


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(RewardLoadError, match="does not exist"):
        load_reward_function(tmp_path / "missing.py")
    path = write(tmp_path, "noname.py", "def reward(queries, prompts, labels):\n    return {}\n")
    with pytest.raises(RewardLoadError) as info:
        load_reward_function(path)
    msg = str(info.value)
    assert str(path) in msg and "does not define `reward_func`" in msg and "It defines: reward" in msg
    assert "def reward_func(queries, prompts, labels)" in msg

    for i, sig in enumerate(["queries, prompts", "queries", "queries, prompts, labels, extra",
                             "*, queries, prompts, labels"]):
        path = write(tmp_path, f"sig{i}.py", f"def reward_func({sig}):\n    return {{}}\n")
        with pytest.raises(RewardLoadError, match=r"cannot be called as reward_func\(queries, prompts, labels\)"):
            load_reward_function(path)
    # accepted signatures
    for i, sig in enumerate(["queries, prompts, labels", "q, p, l, extra=None", "*args", "queries, *rest, **kw"]):
        load_reward_function(write(tmp_path, f"ok{i}.py", f"def reward_func({sig}):\n    return {{}}\n"))

    path = write(tmp_path, "notfn.py", "reward_func = 3\n")
    with pytest.raises(RewardLoadError, match="is a int, not a function"):
        load_reward_function(path)


def test_import_time_failure_carries_traceback(tmp_path):
    path = write(tmp_path, "broken.py", "import json\n\nx = json.loads('{bad')\n\ndef reward_func(q, p, l):\n    pass\n")
    with pytest.raises(RewardLoadError) as info:
        load_reward_function(path)
    msg = str(info.value)
    assert "failed while loading" in msg and "JSONDecodeError" in msg and "broken.py" in msg and "line 3" in msg
    path = write(tmp_path, "syntax.py", "def reward_func(q, p, l)\n    return 1\n")
    with pytest.raises(RewardLoadError, match="SyntaxError"):
        load_reward_function(path)
    path = write(tmp_path, "exits.py", "import sys\nsys.exit(3)\n")
    with pytest.raises(RewardLoadError, match="SystemExit"):
        load_reward_function(path)


def test_user_module_can_use_dataclasses(tmp_path):
    code = """
        from dataclasses import dataclass

        @dataclass
        class Verdict:
            value: float

        def reward_func(queries, prompts, labels):
            return {"rewards": [Verdict(1.0).value for _ in queries]}
    """
    fn = load_reward_function(write(tmp_path, "dc.py", code))
    assert call_reward_function(fn, Q, P, L).rewards.tolist() == [1.0] * 3


def test_local_executor_is_a_reward_executor(tmp_path):
    def reward_func(queries, prompts, labels):
        return {"rewards": [len(q) - len(p) for q, p in zip(queries, prompts)]}

    with LocalFunctionReward(reward_func) as executor:
        assert isinstance(executor, RewardExecutor)
        assert executor.score(Q, P, L).rewards.tolist() == [1.0, 1.0, 3.0]
    with pytest.raises(RewardLoadError):
        LocalFunctionReward(lambda q: q)


def test_result_concat():
    a = RewardResult(torch.tensor([1.0]), torch.tensor([1.0]), {"m": 1.0}, {"m": torch.tensor([1.0])})
    b = RewardResult(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0] * 3), {"m": 0.0}, {"m": torch.zeros(3)})
    c = RewardResult.concat([a, b])
    assert c.rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert c.extra_logs["m"] == pytest.approx(0.25)  # size-weighted
    assert c.extra_logs_per_sample["m"].tolist() == [1.0, 0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- fixture rewards in the seed's logic


def test_math_reward_fixture():
    fn = load_reward_function(DATA / "reward_math.py")
    prompts = ["Q: 3+4?\nA: ", "Q: 6*7?\nA: ", "Q: 10-3?\nA: ", "Q: 2+2?\nA: ", "Q: 1000+234?\nA: "]
    responses = ["3 + 4 = 7\n#### 7", "The answer is: 42.", "#### 6", "no idea", "#### 1,234"]
    labels = ["7", "42", "7", "4", "1234"]
    res = call_reward_function(fn, [p + r for p, r in zip(prompts, responses)], prompts, labels)
    assert res.rewards.tolist() == [1.0, 1.0, 0.0, -0.5, 1.0]
    assert res.scores.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert res.extra_logs["accuracy"] == pytest.approx(0.6)
    assert res.extra_logs["formatted"] == pytest.approx(0.8) and res.extra_logs["n"] == 5.0
    assert res.extra_logs_per_sample["formatted"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_code_reward_fixture_runs_pytest_on_generated_code():
    fn = load_reward_function(DATA / "reward_code_tests.py")
    prompt = "# Write add(a, b) with a pytest test.\n"
    good = "def add(a, b):\n    return a + b\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    bad = "def add(a, b):\n    return a - b\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    broken = "def add(a, b)\n    return a + b\n"
    res = call_reward_function(fn, [prompt + c for c in (good, bad, broken)], [prompt] * 3, [""] * 3)
    assert res.rewards.tolist() == [1.0, 0.0, -1.0]
    assert res.scores.tolist() == [1.0, 0.5, 0.0]


# --------------------------------------------------------------------------- tiny local models (no hub)


def _tiny_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=64,
    )


WORDS = "the answer is good bad helpful rude thanks hello world great awful 4 2 + ? : q a".split()


def _save_bert(path: Path, num_labels: int) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = _tiny_tokenizer(WORDS)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=num_labels,
                     pad_token_id=tok.pad_token_id)
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return _save_bert(tmp_path_factory.mktemp("cls2"), num_labels=2)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_reward_model_single_logit_bert(tmp_path):
    path = _save_bert(tmp_path / "rm1", num_labels=1)
    rm = RewardModelReward(path, batch_size=2)
    texts = ["q : 2 + 2 ? a : 4", "hello world", "the answer is good thanks", "rude"]
    res = rm.score(texts, ["q"] * 4)
    assert res.rewards.shape == (4,) and torch.isfinite(res.rewards).all()
    assert torch.allclose(res.scores, torch.sigmoid(res.rewards))
    # same numbers as the raw model, batch by batch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        single = torch.cat([model(**tok([t], return_tensors="pt")).logits[:, 0] for t in texts])
    assert torch.allclose(res.rewards, single, atol=1e-5)


def test_reward_model_two_labels_is_positive_probability(classifier_dir):
    res = RewardModelReward(classifier_dir).score(["good", "bad"], ["", ""])
    assert ((res.rewards > 0) & (res.rewards < 1)).all()
    assert torch.equal(res.rewards, res.scores)


def test_reward_model_llama_without_pad_token(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tok = _tiny_tokenizer(WORDS)
    tok.pad_token = None
    tok.eos_token = "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, num_labels=1)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm = RewardModelReward(tmp_path, batch_size=4)
    texts = ["hello world the answer is 4", "bad"]
    batched = rm.score(texts, ["", ""]).rewards
    one_by_one = torch.cat([rm.score([t], [""]).rewards for t in texts])
    assert torch.allclose(batched, one_by_one, atol=1e-5)  # padding does not change the score


def test_reward_model_missing_dir(tmp_path):
    with pytest.raises(RewardLoadError, match="does not exist"):
        RewardModelReward(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardLoadError, match="cannot load a sequence-classification reward model"):
        RewardModelReward(tmp_path / "empty")


def test_classifier_pipeline_reward_fixture_setup_once(classifier_dir, tmp_path, monkeypatch):
    counter = tmp_path / "count.txt"
    monkeypatch.setenv("REWARD_CLASSIFIER_DIR", str(classifier_dir))
    monkeypatch.setenv("REWARD_SETUP_COUNTER", str(counter))
    path = tmp_path / "reward_classifier.py"
    path.write_text((DATA / "reward_classifier.py").read_text())
    executor = LocalFunctionReward(path)
    prompts = ["q : hello", "q : hello"]
    queries = [prompts[0] + " the answer is good thanks great", prompts[1] + " rude"]
    first = executor.score(queries, prompts, ["", ""])
    second = LocalFunctionReward(path).score(queries, prompts, ["", ""])
    assert counter.read_text().count("setup") == 1
    assert torch.equal(first.rewards, second.rewards)
    assert ((first.rewards > 0) & (first.rewards < 1)).all()
    assert first.extra_logs["short_ratio"] == 0.5


# --------------------------------------------------------------------------- the seed's own examples, unchanged


def _seed_blocks() -> dict[str, str]:
    text = SEED.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    named = {}
    for block in blocks:
        first = block.strip().splitlines()[0].strip()
        if first.startswith("# reward_func") and first.endswith(".py") and "def reward_func(" in block:
            named[first[2:]] = block
    return named


@pytest.mark.parametrize("name", ["reward_func_code_gen.py", "reward_func_math.py", "reward_func_conversation.py"])
def test_seed_examples_run_unchanged(name, tmp_path, monkeypatch):
    if not SEED.is_file():
        pytest.skip(f"{SEED} not present")
    blocks = _seed_blocks()
    assert name in blocks, f"seed no longer has the {name} example"
    if "pipeline(" in blocks[name]:
        pytest.skip("the seed's pipeline example downloads a hub model")
    path = tmp_path / name
    path.write_text(blocks[name])
    fn = load_reward_function(path)
    if name == "reward_func_math.py":
        prompts = ["Question: 2+2?\n", "Q: 6*7?\n", "Q: 1-1?\n", "Q: ?\n"]
        queries = [prompts[0] + "Answer: The answer is 4", prompts[1] + "Work.\n#### 42", prompts[2] + "= 5",
                   prompts[3] + "dunno"]
        res = call_reward_function(fn, queries, prompts, ["4", "42", "0", "1"], source=str(path))
        assert res.rewards.tolist() == [1.0, 1.0, 0.0, -0.5]
        assert res.scores.tolist() == pytest.approx([1.0, 1.0, 1 / 3, 0.0])
        assert res.extra_logs == pytest.approx({"math_accuracy": 0.5, "answer_formatted": 0.75})
    else:
        # The seed runs `python -m pytest`: make `python` this interpreter, without our plugins.
        monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        prompt = "# add with a test\n"
        good = "def add(a, b):\n    return a + b\n\ndef test_add():\n    assert add(1, 2) == 3\n"
        bad = good.replace("a + b", "a - b")
        res = call_reward_function(fn, [prompt + good, prompt + bad], [prompt] * 2, ["", ""], source=str(path))
        assert res.rewards.tolist() == pytest.approx([1.0, 0.3])
        assert res.scores.tolist() == pytest.approx([1.0, 0.65])
        assert set(res.extra_logs) == {"code_correctness", "avg_correctness"}


def test_seed_template_is_reported_as_a_reward_fault(tmp_path):
    """The seed's template (rewards = torch.tensor([...])) is not runnable; we say why."""
    if not SEED.is_file():
        pytest.skip(f"{SEED} not present")
    template = next(b for b in re.findall(r"```python\n(.*?)```", SEED.read_text(), flags=re.S)
                    if "torch.tensor([...])" in b)
    fn = load_reward_function(template)
    with pytest.raises(RewardFunctionError) as info:
        call_reward_function(fn, ["q"], ["p"], ["l"])
    assert info.value.exc_type in {"TypeError", "RuntimeError", "ValueError"}


# --------------------------------------------------------------------------- run_reward_check (rlhf test-reward)


def check(file, data, **kw):
    out = io.StringIO()
    code = reward_check.run_reward_check(file, data, out=out, **kw)
    return code, out.getvalue()


def jsonl(tmp_path: Path, rows, name="samples.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"prompt": "Q: 2+2?\nA: ", "response": "#### 4", "answer": "4"},
    {"prompt": "Q: 3+3?\nA: ", "response": "The answer is 7", "answer": "6"},
]


@pytest.mark.parametrize("use_rich", [None, False])
def test_check_good_file_exit_zero(tmp_path, use_rich):
    code, text = check(DATA / "reward_math.py", DATA / "math_samples.jsonl", label_key="answer", use_rich=use_rich)
    assert code == 0, text
    assert "OK: reward_func satisfies the reward contract" in text
    assert "accuracy=0.5" in text  # batch extra_logs
    assert "formatted" in text  # per-sample column
    for reward in ("1", "0", "-0.5"):
        assert reward in text
    assert "Tom has 3 apples" in text


def test_check_query_key_and_max_samples(tmp_path):
    rows = [{"input": r["prompt"], "query": r["prompt"] + r["response"], "answer": r["answer"]} for r in ROWS]
    code, text = check(DATA / "reward_math.py", jsonl(tmp_path, rows), label_key="answer", max_samples=1,
                       use_rich=False)
    assert code == 0, text
    assert "on 1 samples" in text


def reward_file(tmp_path: Path, body: str, name="reward_func.py") -> Path:
    path = tmp_path / name
    path.write_text("import torch\n\ndef reward_func(queries, prompts, labels):\n" + textwrap.indent(
        textwrap.dedent(body), "    "))
    return path


@pytest.mark.parametrize(
    "body, reason",
    [
        ("return torch.ones(len(queries))", "instead of a dict"),
        ("return {'scores': torch.ones(len(queries))}", 'without the required key "rewards"'),
        ("return {'rewards': torch.ones(len(queries) + 1)}", "has length 3 but the batch has 2 queries"),
        ("return {'rewards': torch.tensor([0.0, float('nan')])}", "`rewards[1]` is NaN"),
        ("return {'rewards': torch.tensor([float('inf'), 0.0])}", "`rewards[0]` is +inf"),
        ("return {'rewards': torch.tensor([0.0, float('-inf')])}", "`rewards[1]` is -inf"),
        ("return {'rewards': ['a', 'b']}", "`rewards[0]` is a str"),
        ("return {'rewards': torch.ones(len(queries), 1)}", "has shape [2, 1]"),
        ("return {'rewards': torch.ones(2), 'scores': torch.tensor([0.5, 1.5])}", "scores must lie in [0, 1]"),
        ("return {'rewards': torch.ones(2), 'extra_logs': 3}", "`extra_logs` is a int"),
        ("raise KeyError('label')", "reward_func raised KeyError: 'label' (batch of 2 samples)"),
    ],
    ids=["bare-tensor", "no-rewards", "length", "nan", "inf", "-inf", "non-numeric", "2d", "scores-range",
         "extra-logs", "raises"],
)
def test_check_violations_exit_nonzero_with_reason(tmp_path, body, reason):
    path = reward_file(tmp_path, body)
    code, text = check(path, jsonl(tmp_path, ROWS), use_rich=False)
    assert code == reward_check.EXIT_VIOLATION, text
    assert reason in text, text
    assert "OK:" not in text


def test_check_nan_names_the_data_line(tmp_path):
    path = reward_file(tmp_path, "return {'rewards': torch.tensor([0.0, float('nan')])}")
    code, text = check(path, jsonl(tmp_path, ROWS), use_rich=False)
    assert "sample 1 (data line 2)" in text and "Q: 3+3?" in text


def test_check_raise_prints_user_traceback(tmp_path):
    path = reward_file(tmp_path, "return {'rewards': [float(l) for l in labels]}")
    code, text = check(path, jsonl(tmp_path, ROWS), use_rich=False)
    assert code == 1
    # no --label-key -> labels are "" like OpenRLHF -> float("") fails inside the user's code
    assert "ValueError" in text and "could not convert string to float" in text and str(path) in text


def test_check_warnings_do_not_fail(tmp_path):
    path = reward_file(tmp_path, "return {'rewards': torch.tensor([2, -1]), 'extra': 1}")
    code, text = check(path, jsonl(tmp_path, ROWS), use_rich=False)
    assert code == 0, text
    assert "warning: `rewards` has dtype torch.int64" in text
    assert "warning: keys ['extra'] are ignored" in text
    assert "no `scores` returned and some rewards lie outside [0, 1]" in text


def test_check_load_and_data_errors(tmp_path):
    good = DATA / "reward_math.py"
    data = jsonl(tmp_path, ROWS)
    assert check(tmp_path / "missing.py", data)[0] == reward_check.EXIT_USAGE
    assert check(good, tmp_path / "missing.jsonl")[0] == reward_check.EXIT_USAGE
    bad_sig = tmp_path / "sig.py"
    bad_sig.write_text("def reward_func(queries):\n    return {}\n")
    code, text = check(bad_sig, data, use_rich=False)
    assert code == reward_check.EXIT_VIOLATION and "cannot be called as reward_func" in text
    code, text = check(good, data, label_key="nope", use_rich=False)
    assert code == 2 and "no label field 'nope'" in text and ":1:" in text
    code, text = check(good, jsonl(tmp_path, [{"question": "x", "response": "y"}], "q.jsonl"), use_rich=False)
    assert code == 2 and "no prompt field 'prompt' or 'input'" in text
    code, text = check(good, jsonl(tmp_path, [{"prompt": "x"}], "r.jsonl"), use_rich=False)
    assert code == 2 and "no response field" in text
    code, text = check(good, jsonl(tmp_path, [{"prompt": "x", "query": "y"}], "s.jsonl"), use_rich=False)
    assert code == 2 and "does not start with the prompt" in text
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x", "response": "y"}\n{oops\n')
    code, text = check(good, broken, use_rich=False)
    assert code == 2 and "broken.jsonl:2: not valid JSON" in text
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert check(good, empty)[0] == 2


def test_check_argparse_entry(tmp_path, capsys):
    data = jsonl(tmp_path, ROWS)
    assert reward_check.main([str(DATA / "reward_math.py"), "--data", str(data), "--label-key", "answer",
                              "--plain"]) == 0
    assert "OK:" in capsys.readouterr().out


def test_check_hints_at_unused_label_field(tmp_path):
    code, text = check(DATA / "reward_math.py", DATA / "math_samples.jsonl", use_rich=False)
    assert code == 0
    assert "no --label-key given" in text and "answer" in text


def test_reward_model_normalize(tmp_path):
    import json as _json

    path = _save_bert(tmp_path / "rmn", num_labels=1)
    raw = RewardModelReward(path).score(["hello world"], [""]).rewards
    cfg = _json.loads((path / "config.json").read_text())
    cfg.update(mean=0.5, std=2.0)
    (path / "config.json").write_text(_json.dumps(cfg))
    normed = RewardModelReward(path, normalize=True).score(["hello world"], [""]).rewards
    assert torch.allclose(normed, (raw - 0.5) / 2.0, atol=1e-6)
    with pytest.raises(RewardLoadError, match="normalize=True needs"):
        RewardModelReward(_save_bert(tmp_path / "rm2", num_labels=2), normalize=True)


@pytest.mark.parametrize("example", ["math-gsm8k"])
def test_product_examples_pass_the_check(example):
    """The shipped example reward files satisfy the contract on our samples."""
    path = Path(__file__).resolve().parents[2] / "examples" / example / "reward_func.py"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    code, text = check(path, DATA / "math_samples.jsonl", label_key="answer", use_rich=False)
    assert code == 0, text


def test_validate_reward_output_directly():
    res = validate_reward_output({"rewards": [0.5]}, 1, ["p"], source="server X")
    assert res.rewards.tolist() == [0.5]
    with pytest.raises(RewardContractError, match="^server X returned"):
        validate_reward_output([0.5], 1, source="server X")


def test_loaded_function_pickles_by_value_for_ray(tmp_path):
    """Ray ships the function to workers that never saw the file: it must pickle by value."""
    import subprocess

    cloudpickle = pytest.importorskip("cloudpickle")
    fn = load_reward_function(DATA / "reward_math.py")
    blob = tmp_path / "fn.pkl"
    blob.write_bytes(cloudpickle.dumps(fn))
    code = (
        "import pickle, sys; fn = pickle.load(open(sys.argv[1], 'rb')); "
        "print(float(fn(['Q\\n#### 4'], ['Q\\n'], ['4'])['rewards'][0]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"
