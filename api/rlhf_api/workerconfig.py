"""What the workers read: the job's spec plus where the operator (or `rlhf run`) put things.

The operator renders it into the job's snapshot ConfigMap, mounted at CONFIG_DIR; the
RayJob entrypoint is ``python -m rlhf_workers --config CONFIG_DIR/CONFIG_FILE``.
`rlhf run` builds the same object from a local job file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import Field

from .progress import PROGRESS_PORT
from .base import SpecModel
from .spec import RLHFJobSpec

CONFIG_DIR = "/etc/rlhf/config"
CONFIG_FILE = "worker.json"
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
    create_tiny_model: bool = Field(default=False, description="Write a tiny random model at spec.model.path first if "
                                    "none is there (the job's rlhf.dev/create-tiny-model annotation).")
    output_dir: str = Field(description="Metrics, checkpoints and the final model go here.")
    progress_port: int = PROGRESS_PORT
    progress_linger_seconds: float = Field(
        default=0.0, description="Keep serving the final progress report this long after training ends, "
        "so that a poller (the operator) sees it before the Ray job ends and KubeRay removes the cluster.")

    def to_json(self) -> str:
        # JSON, not YAML: the operator renders one config per job, and YAML's (pure-Python)
        # representer took longer than all of a job's API calls (1.5 ms against 0.04 ms).
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "WorkerConfig":
        """Read a config file: JSON as the operator writes it, or YAML written by hand."""
        text = Path(path).read_text()
        try:
            return cls.model_validate_json(text)
        except ValueError:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            return cls.model_validate(data)
