"""Prompt data: load, template, tokenize, and hand out in a resumable order.

Sources (``spec.data.prompts``):

* a ``.jsonl`` file (one JSON object per line), a ``.json`` file (a list of objects, or an
  object whose one list-valued key holds them), a ``.parquet`` file;
* a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict``
  from which ``spec.data.split`` is read);
* a dataset in Hugging Face ``datasets`` form, loaded with ``datasets.load_dataset``: a hub id
  such as ``OpenRLHF/prompt-collection-v0.1``, or a local directory laid out as a hub dataset
  repository (its README's ``configs``, or ``data.config`` given). As in OpenRLHF's
  ``--prompt_data``, ``ID@DIR`` reads the repository's sub-directory DIR (``data_dir``);
  ``data.config`` names the configuration (``load_dataset``'s ``name``, e.g. ``main`` of
  ``openai/gsm8k``) and ``data.split`` the split (OpenRLHF ``--prompt_split``). A hub id is
  fetched from the hub, or read from the ``datasets`` cache when ``HF_DATASETS_OFFLINE=1``;
  gated datasets take ``HF_TOKEN`` (``cluster.env[].valueFrom.secretKeyRef`` in a cluster);
* any other directory: every ``*.jsonl``/``*.json``/``*.parquet`` file in it, in name order.

Each record becomes a prompt as OpenRLHF builds it: with ``applyChatTemplate`` the
``inputKey`` value (a string, or a list of chat messages) goes through the tokenizer's chat
template with the generation prompt; otherwise the string is used as is, formatted into
``inputTemplate`` when one is given. ``labelKey`` values are passed to the reward unchanged
(``""`` without a label key, as OpenRLHF does).

:class:`PromptStream` hands prompts out episode by episode, reshuffled each episode with
the job's seed, and its position (episode, offset) is saved in checkpoints so a resumed run
continues with exactly the prompts it would have seen.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """The prompt data cannot be used; the message names the file/record and the fix."""


@dataclass(frozen=True)
class Prompt:
    index: int  #: position in the (max_samples-limited) dataset
    text: str  #: the prompt text the model sees (template applied) and reward_func gets as `prompts`
    token_ids: tuple[int, ...]
    label: Any  #: the label_key value ("" without a label key)


# --------------------------------------------------------------------------- reading records


# A hub dataset id: an optional owner and '/', then a name, as the hub spells repository ids.
HUB_ID = re.compile(r"^([A-Za-z0-9][-\w.]*/)?[A-Za-z0-9][-\w.]*$")


def split_data_dir(prompts: str) -> tuple[str, Optional[str]]:
    """``ID@DIR`` → (ID, DIR), as OpenRLHF's --prompt_data reads it; (prompts, None) without '@'."""
    source, at, data_dir = prompts.partition("@")
    return source.strip(), (data_dir.strip() or None) if at else None


def is_hub_id(prompts: str) -> bool:
    """Whether ``prompts`` names a hub dataset (``owner/name``, optionally ``@dir``) rather than a file."""
    source, _ = split_data_dir(prompts)
    return "/" in source and not source.startswith(("/", ".", "~")) and bool(HUB_ID.match(source)) \
        and Path(source).suffix not in DATA_SUFFIXES


def read_records(path: str | Path, split: str = "train", config: Optional[str] = None) -> list[dict[str, Any]]:
    """All records of a JSONL/JSON/Parquet file, a saved dataset, a dataset repository or hub id,
    or a directory of files."""
    source, data_dir = split_data_dir(str(path))
    p = Path(source).expanduser()
    if not p.exists():
        if is_hub_id(str(path)):
            return _load_dataset(source, config, data_dir, split)
        raise DataError(f"data.prompts: {p} does not exist (give a local/PVC path, or a hub dataset id such as"
                        " OpenRLHF/prompt-collection-v0.1)")
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return _read_saved_dataset(p, split)
        if config is not None or data_dir is not None or _has_dataset_card(p):
            return _load_dataset(str(p), config, data_dir, split)
        files = sorted(f for f in p.iterdir() if f.suffix in DATA_SUFFIXES)
        if not files:
            raise DataError(f"data.prompts: directory {p} holds no saved dataset and no {'/'.join(DATA_SUFFIXES)} files")
        return [r for f in files for r in _read_file(f)]
    return _read_file(p)


def _read_file(p: Path) -> list[dict[str, Any]]:
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # perhaps JSON lines with a .json suffix
        if isinstance(doc, list):
            return _objects(doc, p)
        if isinstance(doc, dict):
            lists = [v for v in doc.values() if isinstance(v, list)]
            if len(lists) == 1:
                return _objects(lists[0], p)
            raise DataError(f"data.prompts: {p} is a JSON object; expected a list of records (or one key holding it)")
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"data.prompts: {p} line {n} is not JSON ({exc.msg}); expected one JSON object per line") from None
    return _objects(records, p)


def _objects(records: list, p: Path) -> list[dict[str, Any]]:
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"data.prompts: {p} record {i} is a {type(r).__name__}; expected a JSON object with the input key")
    return records


def _read_saved_dataset(p: Path, split: str) -> list[dict[str, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(p))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"data.split: saved dataset {p} has no split {split!r} (it has: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded.to_list()


def _has_dataset_card(p: Path) -> bool:
    """A directory laid out as a hub dataset repository: a README.md whose metadata declares its configs."""
    card = p / "README.md"
    if not card.is_file():
        return False
    head = card.read_text(encoding="utf-8", errors="replace")
    return head.startswith("---") and re.search(r"^configs:", head.split("\n---", 1)[0], re.M) is not None


def _load_dataset(source: str, config: Optional[str], data_dir: Optional[str], split: str) -> list[dict[str, Any]]:
    """One split of a dataset in ``datasets`` form: a hub id, or a local repository directory."""
    import datasets

    where = source + (f"@{data_dir}" if data_dir else "")
    try:
        loaded = datasets.load_dataset(source, config, data_dir=data_dir)
    except ValueError as exc:  # an unknown config or split names the ones there are
        field = "data.config" if "config" in str(exc).lower() else "data.prompts"
        raise DataError(f"{field}: dataset {where}: {exc}") from None
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        offline = " (HF_DATASETS_OFFLINE is set: only datasets already in the cache load)" \
            if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(f"data.prompts: dataset {where} could not be loaded{offline}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"data.split: dataset {where} has no split {split!r} (it has: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded.to_list()


# --------------------------------------------------------------------------- prompts


def build_prompt_text(record: dict[str, Any], data_spec, tokenizer, where: str) -> str:
    """The prompt string for one record, as OpenRLHF's prompt dataset builds it."""
    key = data_spec.input_key
    if key not in record:
        raise DataError(f"data.inputKey: {where} has no field {key!r} (it has: {', '.join(map(str, record)) or 'nothing'})")
    value = record[key]
    if data_spec.apply_chat_template:
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("data.applyChatTemplate: the tokenizer has no chat template; set applyChatTemplate: false or use a chat model")
        messages = [{"role": "user", "content": value}] if isinstance(value, str) else value
        if not isinstance(messages, list):
            raise DataError(f"data.inputKey: {where} field {key!r} must be a string or a list of chat messages")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(value, str):
        raise DataError(
            f"data.inputKey: {where} field {key!r} is a {type(value).__name__}; expected a string"
            " (chat message lists need applyChatTemplate: true)"
        )
    return data_spec.input_template.format(value) if data_spec.input_template else value


def load_prompts(data_spec, tokenizer, prompt_max_len: int) -> list[Prompt]:
    """Read, template and tokenize the prompts of ``spec.data`` (at most ``maxSamples``)."""
    records = read_records(data_spec.prompts, data_spec.split, getattr(data_spec, "config", None))
    if data_spec.max_samples is not None:
        records = records[: data_spec.max_samples]
    if not records:
        raise DataError(f"data.prompts: {data_spec.prompts} holds no records")
    label_key = data_spec.label_key
    texts, labels = [], []
    for i, record in enumerate(records):
        where = f"{data_spec.prompts} record {i}"
        texts.append(build_prompt_text(record, data_spec, tokenizer, where))
        if label_key is None:
            labels.append("")
        elif label_key not in record:
            raise DataError(f"data.labelKey: {where} has no field {label_key!r} (it has: {', '.join(map(str, record))})")
        else:
            labels.append(record[label_key])
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prompts, truncated = [], 0
    for i, (text, ids, label) in enumerate(zip(texts, encoded, labels)):
        if len(ids) > prompt_max_len:
            ids = ids[-prompt_max_len:]  # keep the end: the question and the generation prompt
            truncated += 1
        if not ids:
            raise DataError(f"data.inputKey: {data_spec.prompts} record {i} gives an empty prompt")
        prompts.append(Prompt(index=i, text=text, token_ids=tuple(ids), label=label))
    if truncated:
        logger.warning("%d of %d prompts are longer than rollout.promptMaxLen=%d tokens; kept their last tokens",
                       truncated, len(prompts), prompt_max_len)
    return prompts


# --------------------------------------------------------------------------- the stream


class PromptStream:
    """Prompts in a seeded order, episode after episode; its position is checkpointed."""

    def __init__(self, prompts: Sequence[Prompt], episodes: int, seed: int):
        self.prompts = list(prompts)
        self.episodes = episodes
        self.seed = seed
        self.episode = 0
        self.offset = 0
        self._order = self._shuffled(0)

    def _shuffled(self, episode: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + episode).shuffle(order)
        return order

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def exhausted(self) -> bool:
        return self.episode >= self.episodes

    @property
    def consumed(self) -> int:
        """Prompts handed out so far, over all episodes."""
        return self.episode * len(self.prompts) + self.offset

    def take(self, k: int) -> list[Prompt]:
        """The next ``k`` prompts (fewer when the last episode ends)."""
        out: list[Prompt] = []
        while len(out) < k and not self.exhausted:
            step = min(k - len(out), len(self.prompts) - self.offset)
            out += [self.prompts[i] for i in self._order[self.offset:self.offset + step]]
            self.offset += step
            if self.offset == len(self.prompts):
                self.episode, self.offset = self.episode + 1, 0
                self._order = self._shuffled(self.episode)
        return out

    def state(self) -> dict[str, int]:
        return {"episode": self.episode, "offset": self.offset, "num_prompts": len(self.prompts), "seed": self.seed}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("num_prompts") not in (None, len(self.prompts)):
            logger.warning("the checkpoint was taken with %s prompts, the data now has %d; continuing at its position anyway",
                           state["num_prompts"], len(self.prompts))
        self.episode = int(state["episode"])
        self.offset = min(int(state["offset"]), len(self.prompts))
        self._order = self._shuffled(self.episode)


def load_tokenizer(model_spec, trust_remote_code: Optional[bool] = None):
    """The policy's tokenizer (``model.tokenizerPath`` or the model directory), with a pad token."""
    from transformers import AutoTokenizer

    path = model_spec.tokenizer_path or model_spec.path
    trust = model_spec.trust_remote_code if trust_remote_code is None else trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
