"""Checkpoint layout, discovery and rotation.

::

    <output>/checkpoints/
        step_000010/
            policy/step_000010/...   DeepSpeed checkpoint of the policy (model, optimizer, scheduler)
            critic/step_000010/...   the critic's, with gae
            state.json               step, data position, metrics so far - written LAST
        step_000020/...

A checkpoint counts only once its ``state.json`` exists, so a run killed while saving resumes
from the previous one. The newest complete checkpoint is resumed from automatically; at most
``checkpoint.maxKeep`` complete ones are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

STATE_FILE = "state.json"


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


class Checkpoints:
    def __init__(self, root: str | Path, max_keep: int):
        self.root = Path(root)
        self.max_keep = max_keep

    def path_for(self, step: int) -> Path:
        return self.root / tag_for(step)

    def complete(self) -> list[Checkpoint]:
        if not self.root.is_dir():
            return []
        found = []
        for d in self.root.iterdir():
            state = d / STATE_FILE
            if d.is_dir() and d.name.startswith("step_") and state.is_file():
                try:
                    data = json.loads(state.read_text())
                except json.JSONDecodeError:
                    continue
                found.append(Checkpoint(int(data["step"]), d, data))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Optional[Checkpoint]:
        done = self.complete()
        return done[-1] if done else None

    def commit(self, step: int, state: dict[str, Any]) -> Checkpoint:
        """Mark the checkpoint of ``step`` complete (after the workers wrote it) and rotate old ones."""
        path = self.path_for(step)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({**state, "step": step}, indent=1))
        os.replace(tmp, path / STATE_FILE)
        for old in self.complete()[:-self.max_keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        for d in self.root.iterdir():  # partial saves of killed runs, older than the newest complete one
            if d.is_dir() and d.name.startswith("step_") and not (d / STATE_FILE).exists() and d.name < tag_for(step):
                shutil.rmtree(d, ignore_errors=True)
        return Checkpoint(step, path, state)
