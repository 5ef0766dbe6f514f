"""What the workers read: the job's spec plus where the operator (or `rlhf run`) put things.

The operator renders it into the ``<job>-config`` ConfigMap, mounted at CONFIG_DIR; the
RayJob entrypoint is ``python -m rlhf_workers --config CONFIG_DIR/CONFIG_FILE``.
`rlhf run` builds the same object from a local job file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import Field

from .progress import PROGRESS_PORT
from .spec import RLHFJobSpec, SpecModel

CONFIG_DIR = "/etc/rlhf/config"
CONFIG_FILE = "worker.yaml"
CODE_DIR = "/etc/rlhf/code"
REWARD_FILE = "reward_func.py"
AGENT_FILE = "agent_func.py"


class WorkerConfig(SpecModel):
    job_name: str
    namespace: Optional[str] = None
    spec: RLHFJobSpec
    reward_code_path: Optional[str] = Field(default=None, description="File defining reward_func, when reward.function is used.")
    agent_code_path: Optional[str] = Field(default=None, description="File defining the agent, when spec.agent is used.")
    code_hash: Optional[str] = None
    output_dir: str = Field(description="Metrics, checkpoints and the final model go here.")
    progress_port: int = PROGRESS_PORT

    def to_yaml(self) -> str:
        return yaml.dump(self.dump(), Dumper=_Dumper, sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> "WorkerConfig":
        return cls.model_validate(yaml.load(Path(path).read_text(), Loader=_Loader))


# libyaml when available: the operator serializes one config per job and the pure-Python
# emitter alone took longer than all of a job's API calls.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
