"""The operator's settings: OperatorConfig, read from the environment the Helm chart sets.

``OperatorConfig.from_env`` reads every ``RLHF_*`` variable through pydantic-settings
(``_EnvSettings``): a value that does not parse, or an ``RLHF_*`` name that is neither an
operator setting nor one the workers read, is a ``ConfigError`` whose message is one line
naming the variable and the fix. Plain data: every other operator module may import this one,
and it imports none of them but render, for the default worker image.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping, Optional

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from rlhf_api.names import ENV_CONFIG, ENV_JOB_NAME, ENV_REWARD_TOKEN

from .render import RenderOptions

PREFIX = "RLHF_"
# RLHF_* variables other programs of this project read, which may well be set where the operator
# runs (a developer's shell, a test): the workers' (rlhf_api.names; rlhf_workers.local and
# .cluster read the last three), never the operator's.
OTHERS = frozenset({ENV_CONFIG, ENV_JOB_NAME, ENV_REWARD_TOKEN, "RLHF_LOCAL_RUN", "RLHF_PLACEMENT_TIMEOUT_S",
                    "RLHF_WORKER_LOGS"})


class ConfigError(ValueError):
    """A setting the operator cannot start with; the message is one line naming the variable."""


@dataclass
class OperatorConfig:
    """Operator settings; `from_env` reads what the Helm chart sets."""

    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    worker_image: str = RenderOptions.default_image
    progress_interval: float = 15.0
    stall_seconds: float = 600.0
    progress_url: str = "http://{cluster}-head-svc.{namespace}.svc:{port}/progress"
    progress_timeout: float = 5.0
    resync_interval: float = 60.0
    code_retry_seconds: float = 10.0  # a missing code ConfigMap is looked for again this often
    # Transient API errors (outage, 429, 5xx, 409): retried after api_retry_seconds, doubling up
    # to api_retry_max_seconds; failing longer than api_degraded_seconds sets Degraded=True.
    api_retry_seconds: float = 3.0
    api_retry_max_seconds: float = 60.0
    api_degraded_seconds: float = 120.0
    kubeconfig: Optional[str] = None
    kube_context: Optional[str] = None  # a kubeconfig context other than its current one
    log_level: str = "INFO"
    log_format: str = "full"  # kopf's log formats: plain, full or json
    health_port: Optional[int] = 8080
    webhook_port: int = 9443
    webhook_cert_dir: Optional[str] = None
    peering: Optional[str] = None
    peering_priority: Optional[int] = None  # None: a random one (see main.run_operator)
    # Without the admission webhook no requesting user is known, so jobs naming Secrets are
    # refused unless this is set (everyone who may create RLHFJobs may read the namespace's Secrets).
    allow_secret_references: bool = False
    # Before each RayJob, run the job's reward/agent code once in a CPU-only pod (codecheck); a job
    # opts out with spec.preflight: false, the whole operator with this (RLHF_PREFLIGHT_PODS=false).
    preflight_pods: bool = True
    max_workers: int = 16
    # Where the operator and KubeRay's operator run: a job's NetworkPolicy (cluster.networkPolicy)
    # admits their pods from these namespaces only (None: by their labels, from any namespace).
    operator_namespace: Optional[str] = None
    kuberay_namespace: Optional[str] = None

    @property
    def progress_linger_seconds(self) -> float:
        """How long a finished driver keeps its report up: two polls and a timeout."""
        return 2 * self.progress_interval + self.progress_timeout

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "OperatorConfig":
        """The settings in ``env`` (os.environ if None); ConfigError names a bad or unknown variable."""
        env = dict(os.environ if env is None else env)
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in ENV_NAMES and k not in OTHERS)
        if unknown:
            guess = difflib.get_close_matches(unknown[0], sorted(ENV_NAMES), n=1, cutoff=0.8)
            hint = f"did you mean {guess[0]}?" if guess else f"the operator reads {', '.join(sorted(ENV_NAMES))}"
            raise ConfigError(f"{unknown[0]} is not an operator setting: {hint}")
        try:
            read = _EnvSettings(**_Source(_EnvSettings, env)())
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, env)) from None
        values = {f.name: getattr(read, f.name) for f in fields(cls) if f.name in _EnvSettings.model_fields}
        values = {k: v for k, v in values.items() if v is not None or k in _NULLABLE}
        values["namespaces"] = [n.strip() for n in (read.namespaces or "").split(",") if n.strip()]
        if read.health_port is not None:
            values["health_port"] = read.health_port or None  # 0: no health server
        return cls(**values)


_NULLABLE = {"kubeconfig", "kube_context", "webhook_cert_dir", "peering", "peering_priority", "operator_namespace",
             "kuberay_namespace"}

class _EnvSettings(BaseSettings):
    """The environment variables, each a field under its own name (alias); None: not set."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore",
                                      populate_by_name=False)

    namespaces: Optional[str] = Field(default=None, alias="RLHF_NAMESPACES")
    worker_image: Optional[str] = Field(default=None, alias="RLHF_WORKER_IMAGE", min_length=1)
    progress_interval: Optional[float] = Field(default=None, gt=0, alias="RLHF_PROGRESS_INTERVAL_SECONDS")
    stall_seconds: Optional[float] = Field(default=None, gt=0, alias="RLHF_STALL_SECONDS")
    progress_url: Optional[str] = Field(default=None, alias="RLHF_PROGRESS_URL")
    progress_timeout: Optional[float] = Field(default=None, gt=0, alias="RLHF_PROGRESS_TIMEOUT")
    resync_interval: Optional[float] = Field(default=None, gt=0, alias="RLHF_RESYNC_SECONDS")
    code_retry_seconds: Optional[float] = Field(default=None, gt=0, alias="RLHF_CODE_RETRY_SECONDS")
    api_degraded_seconds: Optional[float] = Field(default=None, gt=0, alias="RLHF_API_DEGRADED_SECONDS")
    kubeconfig: Optional[str] = Field(default=None, alias="RLHF_KUBECONFIG")
    kube_context: Optional[str] = Field(default=None, alias="RLHF_KUBE_CONTEXT")
    log_level: Optional[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]] = Field(
        default=None, alias="RLHF_LOG_LEVEL")
    log_format: Optional[Literal["plain", "full", "json"]] = Field(default=None, alias="RLHF_LOG_FORMAT")
    health_port: Optional[int] = Field(default=None, ge=0, le=65535, alias="RLHF_HEALTH_PORT")
    webhook_port: Optional[int] = Field(default=None, ge=1, le=65535, alias="RLHF_WEBHOOK_PORT")
    webhook_cert_dir: Optional[str] = Field(default=None, alias="RLHF_WEBHOOK_CERT_DIR")
    peering: Optional[str] = Field(default=None, alias="RLHF_PEERING")
    peering_priority: Optional[int] = Field(default=None, alias="RLHF_PEERING_PRIORITY")
    allow_secret_references: Optional[bool] = Field(default=None, alias="RLHF_ALLOW_SECRET_REFERENCES")
    preflight_pods: Optional[bool] = Field(default=None, alias="RLHF_PREFLIGHT_PODS")
    operator_namespace: Optional[str] = Field(default=None, alias="RLHF_OPERATOR_NAMESPACE")
    kuberay_namespace: Optional[str] = Field(default=None, alias="RLHF_KUBERAY_NAMESPACE")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if value.strip().upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") \
            else value.strip().lower()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # from_env hands over what _Source read from its mapping


class _Source(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = dict(env)
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, Optional[str]]:
        return {k: v for k, v in self._given.items() if v != ""}


ENV_NAMES = frozenset(f.alias for f in _EnvSettings.model_fields.values() if f.alias)
_EXPECTED = {"float_parsing": "expected a number of seconds such as 600", "int_parsing": "expected a whole number",
             "bool_parsing": "expected true or false", "greater_than": "expected a number above 0"}


def _one_line(exc: ValidationError, env: Mapping[str, str]) -> str:
    """pydantic's first error as one line: the variable, its value, and what it takes instead."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error.get("loc") else "?"
    expected = _EXPECTED.get(error["type"]) or error["msg"][:1].lower() + error["msg"][1:]
    return f"{name}={env.get(name, '')!r} is not valid: {expected}"
