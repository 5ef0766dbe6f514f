"""Checkpoint layout, atomic commit, verification, discovery and rotation.

::

    <output>/checkpoints/
        step_000010/
            policy/step_000010/...   DeepSpeed checkpoint of the policy (model, optimizer, scheduler, RNG states)
            critic/step_000010/...   the critic's, with gae
            hf/                      the policy in Hugging Face format: model.safetensors, config.json,
                                     generation_config.json, the tokenizer, README.md (a model card
                                     naming the job, step and reward): from_pretrained loads it as is
            state.json               step, data position, metrics so far
            manifest.json            size and sha256 of every other file - written LAST
        step_000020/...
        .partial-step_000030/        a save in progress (or killed): never resumed from

A save is written aside, in ``.partial-<tag>``, the ``hf/`` model included (so the manifest
covers it and a half-written model is never visible); :meth:`Checkpoints.commit` adds ``state.json``
and the manifest, reads every file back against it, and only then renames the directory to
its visible name. A run killed while saving therefore leaves a ``.partial-`` directory that
the next commit removes, never a visible half-written checkpoint.

On resume the visible checkpoints are tried newest first; one whose files no longer match its
manifest (truncated, corrupted, missing), whose ``state.json`` is unreadable or lacks ``step``,
is skipped with a warning naming the path and the file, and moved aside to ``.corrupt-<tag>``
so it is neither tried again nor counted by rotation. At most ``checkpoint.maxKeep`` good
checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger("rlhf_workers.train")

STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
PARTIAL_PREFIX = ".partial-"
CORRUPT_PREFIX = ".corrupt-"
HASH_THREADS = 8
HF_DIR = "hf"  #: the Hugging Face-format policy inside every checkpoint
MODEL_CARD = "README.md"


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]

    @property
    def tag(self) -> str:
        return tag_for(self.step)


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from; the message names the path and the file."""


def write_model_card(directory: Path, *, job: str, step: int, total_steps: Optional[int], reward_mean: Optional[float],
                     base_model: str, estimator: str) -> Path:
    """A short README.md for a saved model: which job made it, at which step, with what reward."""
    reward = "not measured" if reward_mean is None else f"{reward_mean:.4f}"
    of = f" of {total_steps}" if total_steps else ""
    text = (f"---\nlibrary_name: transformers\ntags:\n- rlhf\n- {estimator}\n---\n\n"
            f"# {job}, step {step}\n\n"
            f"Policy trained by the RLHFJob `{job}` (RLHF Operator), saved after step {step}{of}.\n\n"
            f"| | |\n| --- | --- |\n| job | `{job}` |\n| step | {step}{of} |\n"
            f"| mean reward of the step's samples | {reward} |\n| advantage estimator | {estimator} |\n"
            f"| started from | `{base_model}` |\n\n"
            "Load it with `AutoModelForCausalLM.from_pretrained(<this directory>)` and "
            "`AutoTokenizer.from_pretrained(<this directory>)`.\n")
    path = Path(directory) / MODEL_CARD
    path.write_text(text)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(directory: Path) -> dict[str, Any]:
    """Record size and sha256 of every file under ``directory`` in its manifest (written last, atomically)."""
    paths = _files(directory)
    for path in paths:
        _fsync(path)
    with ThreadPoolExecutor(HASH_THREADS) as pool:  # hashlib releases the GIL: ranks' files hash in parallel
        digests = list(pool.map(_sha256, paths))
    files = {path.relative_to(directory).as_posix(): {"size": path.stat().st_size, "sha256": digest}
             for path, digest in zip(paths, digests)}
    manifest = {"version": 1, "files": files}
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync(tmp)
    os.replace(tmp, directory / MANIFEST_FILE)
    return manifest


def verify(directory: Path) -> Checkpoint:
    """The checkpoint in ``directory`` once its files match its manifest; :class:`CheckpointError` otherwise."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        if (directory / STATE_FILE).is_file():  # saved by a version without manifests: the loader has the last word
            logger.warning("checkpoint %s has no %s (saved by an older version): its files are not verified",
                           directory, MANIFEST_FILE)
            return _read_state(directory)
        raise CheckpointError(f"{directory}: no {MANIFEST_FILE} (the save did not finish)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    for name, want in files.items():  # sizes first: a truncated file is found without reading anything
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != want["size"]:
            raise CheckpointError(f"{path}: {size} bytes, {want['size']} when saved (truncated or rewritten)")
    names = list(files)
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = list(pool.map(lambda name: _sha256(directory / name), names))
    for name, digest in zip(names, digests):
        if digest != files[name]["sha256"]:
            raise CheckpointError(f"{directory / name}: contents differ from when saved (sha256 mismatch)")
    if STATE_FILE not in files:
        raise CheckpointError(f"{directory / STATE_FILE}: missing")
    return _read_state(directory)


def _read_state(directory: Path) -> Checkpoint:
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: no valid 'step' (got {step!r})")
    if directory.name != tag_for(step) and not directory.name.startswith(PARTIAL_PREFIX):
        raise CheckpointError(f"{path}: step {step} does not match the directory name {directory.name}")
    if not isinstance(state.get("data"), dict):
        raise CheckpointError(f"{path}: no data position ('data')")
    return Checkpoint(step, directory, state)


class Checkpoints:
    def __init__(self, root: str | Path, max_keep: int):
        self.root = Path(root)
        self.max_keep = max_keep

    def path_for(self, step: int) -> Path:
        """Where the checkpoint of ``step`` is visible once committed."""
        return self.root / tag_for(step)

    def staging_for(self, step: int) -> Path:
        """Where the workers write the checkpoint of ``step`` before it is committed."""
        return self.root / (PARTIAL_PREFIX + tag_for(step))

    def prepare(self, step: int) -> Path:
        """An empty staging directory for the save of ``step`` (a leftover of a killed save is removed)."""
        staging = self.staging_for(step)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def _visible(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        dirs = [d for d in self.root.iterdir() if d.is_dir() and d.name.startswith("step_")]
        return sorted(dirs, key=lambda d: d.name)

    def complete(self) -> list[Checkpoint]:
        """The visible checkpoints with a readable state, oldest first (files not hashed: see :meth:`resumable`)."""
        found = []
        for d in self._visible():
            if (d / STATE_FILE).is_file():
                try:
                    found.append(_read_state(d))
                except CheckpointError:
                    continue
        return sorted(found, key=lambda c: c.step)

    def resumable(self) -> list[Checkpoint]:
        """The checkpoints that pass verification, newest first; the others are warned about and moved aside."""
        good = []
        for d in reversed(self._visible()):
            if not (d / STATE_FILE).exists() and not (d / MANIFEST_FILE).exists():
                continue  # a directory a save of an older version left half-way: nothing to warn about
            try:
                good.append(verify(d))
            except CheckpointError as exc:
                self.quarantine(d, str(exc))
        return good

    def latest(self) -> Optional[Checkpoint]:
        """The newest checkpoint that passes verification."""
        good = self.resumable()
        return good[0] if good else None

    def quarantine(self, directory: Path, reason: str) -> None:
        """Move a checkpoint that cannot be resumed from out of the way, with a warning that names it."""
        target = self.root / (CORRUPT_PREFIX + directory.name)
        logger.warning("checkpoint %s is not usable, falling back to the previous one: %s (moved to %s)",
                       directory, reason, target)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(directory, target)
        except OSError as exc:
            logger.warning("could not move %s aside: %s", directory, exc)

    def commit(self, step: int, state: dict[str, Any]) -> Checkpoint:
        """Make the checkpoint of ``step`` visible once the workers wrote it, then rotate old ones.

        The files are in :meth:`staging_for` (or, for callers that wrote in place, in
        :meth:`path_for`); ``state.json`` and the manifest join them, the manifest is checked
        against the files, and a rename makes the checkpoint visible in one step.
        """
        staging = self.staging_for(step)
        final = self.path_for(step)
        work = staging if staging.is_dir() else final
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({**state, "step": step}, indent=1))
        os.replace(tmp, work / STATE_FILE)
        write_manifest(work)
        checkpoint = verify(work)  # read back before it is made visible
        if work is staging:
            if final.exists():  # a step saved again (a run resumed from before it): the new save wins
                old = self.root / (CORRUPT_PREFIX + final.name)
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, final)
            _fsync(self.root)
        self._rotate(step)
        return Checkpoint(step, final, checkpoint.state)

    def _rotate(self, step: int) -> None:
        for old in self.complete()[:-self.max_keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        for d in self.root.iterdir():  # saves of killed runs (corrupt ones stay, set aside, to be looked at)
            if not d.is_dir():
                continue
            if d.name.startswith(PARTIAL_PREFIX) or (
                    d.name.startswith("step_") and not (d / STATE_FILE).exists() and d.name < tag_for(step)):
                shutil.rmtree(d, ignore_errors=True)
