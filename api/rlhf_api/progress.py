"""The progress endpoint's JSON contract, shared by the worker (server) and the operator (poller).

The driver on the Ray head serves ``GET http://<head>:PROGRESS_PORT/progress`` with one
``ProgressReport``. The operator reaches it through the head Service KubeRay creates, so
workers need no Kubernetes credentials. Times are RFC 3339 UTC strings.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

PROGRESS_PORT = 8270
PROGRESS_PATH = "/progress"
PROGRESS_PORT_NAME = "rlhf-progress"
SCHEMA_VERSION = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CheckpointInfo(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    step: int
    path: str
    time: str


class RewardErrorCounts(BaseModel):
    """Reward calls that faulted since the run started, by how they ended (ok calls are not counted here)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    raised: int = 0
    timeout: int = 0
    invalid: int = 0


class ProgressReport(BaseModel):
    """What the worker says about itself. Unknown keys are ignored so either side can add fields."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    state: Literal["starting", "training", "finished", "failed"] = "starting"
    step: int = 0
    total_steps: Optional[int] = None
    episode: Optional[int] = None
    reward_mean: Optional[float] = None
    score_mean: Optional[float] = None
    kl: Optional[float] = None
    samples_per_second: Optional[float] = None
    last_weight_sync: Optional[str] = None
    last_checkpoint: Optional[CheckpointInfo] = None
    final_model: Optional[str] = None
    reward_errors: Optional[RewardErrorCounts] = None
    reward_error_rate: Optional[float] = None  # faulted share of samples over the fault window (reward.maxErrorRate's)
    failure_reason: Optional[str] = None  # with state "failed": a condition reason such as "RewardFaults"
    heartbeat: str = ""
    message: Optional[str] = None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ProgressReport":
        return cls.model_validate_json(text)
