"""Prompt data in Hugging Face `datasets` form: a dataset saved with save_to_disk, a dataset
repository directory with configs and splits (what a hub id resolves to), OpenRLHF's ID@DIR, and
hub ids, all loaded with the real `datasets` library. Every dataset is built here; nothing is
downloaded (the hub is switched off for the whole module, as HF_DATASETS_OFFLINE=1 does)."""

import json
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported by anything in this process
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from rlhf_api.validation import parse_spec  # noqa: E402
from rlhf_workers.data import DataError, is_hub_id, load_prompts, read_records, split_data_dir  # noqa: E402
from support.jobs import minimal_spec  # noqa: E402

CARD = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train.jsonl
  - split: test
    path: main/test.jsonl
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train.jsonl
---
# A tiny math set
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Whatever imported `datasets` first, it sees the hub as off (the flags are read at import)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def repository(tmp_path):
    """A directory laid out as a hub dataset repository: a card declaring two configs, files per split."""
    repo = tmp_path / "gsm-tiny"
    write_jsonl(repo / "main" / "train.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(5)])
    write_jsonl(repo / "main" / "test.jsonl", [{"question": "t0", "answer": "0"}])
    write_jsonl(repo / "socratic" / "train.jsonl", [{"question": "s0", "answer": "x"}, {"question": "s1", "answer": "y"}])
    (repo / "README.md").write_text(CARD)
    return repo


def test_a_saved_dataset_dict_is_read_by_split(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
        "test": datasets.Dataset.from_list([{"prompt": "c"}]),
    }).save_to_disk(str(saved))
    assert read_records(saved) == [{"prompt": "a"}, {"prompt": "b"}]
    assert read_records(saved, "test") == [{"prompt": "c"}]
    with pytest.raises(DataError, match=r"data.split: saved dataset .* has no split 'dev' \(it has: train, test\)"):
        read_records(saved, "dev")


def test_a_dataset_repository_is_read_by_config_and_split(repository):
    assert [r["question"] for r in read_records(repository, "train", "main")] == [f"q{i}" for i in range(5)]
    assert read_records(repository, "test", "main") == [{"question": "t0", "answer": "0"}]
    assert [r["question"] for r in read_records(repository, "train", "socratic")] == ["s0", "s1"]


def test_an_unknown_config_or_split_is_refused_naming_the_field(repository):
    with pytest.raises(DataError, match=r"^data.config: .*nope"):
        read_records(repository, "train", "nope")
    with pytest.raises(DataError, match=r"^data.split: dataset .* has no split 'dev' \(it has: train\)"):
        read_records(repository, "dev", "socratic")


def test_id_at_dir_reads_the_sub_directory_as_openrlhf_does(tmp_path):
    repo = tmp_path / "prompts-repo"
    write_jsonl(repo / "v2" / "train.jsonl", [{"input": "from v2"}])
    write_jsonl(repo / "v1" / "train.jsonl", [{"input": "from v1"}])
    assert read_records(f"{repo}@v2") == [{"input": "from v2"}]
    assert split_data_dir("OpenRLHF/prompt-collection-v0.1@math") == ("OpenRLHF/prompt-collection-v0.1", "math")


@pytest.mark.parametrize("text, hub", [
    ("OpenRLHF/prompt-collection-v0.1", True), ("openai/gsm8k@main", True), ("gsm8k", False),
    ("/data/gsm8k.jsonl", False), ("quickstart/prompts.jsonl", False), ("./local/dir", False), ("a/b/c", False),
])
def test_hub_ids_are_told_from_paths(text, hub):
    assert is_hub_id(text) is hub


def test_a_hub_id_not_in_the_cache_fails_offline_with_a_readable_error_and_no_download():
    with pytest.raises(DataError, match=r"^data.prompts: dataset rlhf-tests/no-such-set could not be loaded "
                                        r"\(HF_DATASETS_OFFLINE is set"):
        read_records("rlhf-tests/no-such-set")


def test_a_missing_path_that_is_no_hub_id_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist .*hub dataset id"):
        read_records(tmp_path / "nothing.jsonl")


def test_the_spec_selects_config_and_split_and_prompts_are_built_from_them(repository):
    from rlhf_workers.tiny import make_tokenizer

    spec = parse_spec(minimal_spec(data={"prompts": str(repository), "config": "main", "split": "test",
                                         "inputKey": "question", "labelKey": "answer", "inputTemplate": "Q: {}"}))
    prompts = load_prompts(spec.data, make_tokenizer(), 64)
    assert [(p.text, p.label) for p in prompts] == [("Q: t0", "0")]


def test_rlhf_run_keeps_a_hub_id_and_resolves_a_local_repository(tmp_path, repository):
    from rlhf_workers.local import _resolve_prompts

    assert _resolve_prompts("OpenRLHF/prompt-collection-v0.1", tmp_path) == "OpenRLHF/prompt-collection-v0.1"
    assert _resolve_prompts("gsm-tiny@main", repository.parent) == f"{repository}@main"
