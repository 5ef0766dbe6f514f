"""The operator's settings (OperatorConfig, read from the environment the Helm chart sets) and
its counters (Metrics, served on /metrics). Plain data: every other operator module may import
this one, and it imports none of them but render, for the default worker image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from rlhf_api.jobstatus import Phase

from .render import RenderOptions

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
    log_level: str = "INFO"
    health_port: Optional[int] = 8080
    webhook_port: int = 9443
    webhook_cert_dir: Optional[str] = None
    peering: Optional[str] = None
    # Without the admission webhook no requesting user is known, so jobs naming Secrets are
    # refused unless this is set (everyone who may create RLHFJobs may read the namespace's Secrets).
    allow_secret_references: bool = False
    max_workers: int = 16

    @property
    def progress_linger_seconds(self) -> float:
        """How long a finished driver keeps its report up: two polls and a timeout."""
        return 2 * self.progress_interval + self.progress_timeout

    @classmethod
    def from_env(cls, env: Optional[dict[str, str]] = None) -> "OperatorConfig":
        env = dict(os.environ if env is None else env)
        cfg = cls()
        if env.get("RLHF_NAMESPACES"):
            cfg.namespaces = [n.strip() for n in env["RLHF_NAMESPACES"].split(",") if n.strip()]
        cfg.worker_image = env.get("RLHF_WORKER_IMAGE") or cfg.worker_image
        cfg.progress_interval = float(env.get("RLHF_PROGRESS_INTERVAL_SECONDS") or cfg.progress_interval)
        cfg.stall_seconds = float(env.get("RLHF_STALL_SECONDS") or cfg.stall_seconds)
        cfg.progress_url = env.get("RLHF_PROGRESS_URL") or cfg.progress_url
        cfg.resync_interval = float(env.get("RLHF_RESYNC_SECONDS") or cfg.resync_interval)
        cfg.code_retry_seconds = float(env.get("RLHF_CODE_RETRY_SECONDS") or cfg.code_retry_seconds)
        cfg.api_degraded_seconds = float(env.get("RLHF_API_DEGRADED_SECONDS") or cfg.api_degraded_seconds)
        cfg.kubeconfig = env.get("RLHF_KUBECONFIG") or None
        cfg.log_level = env.get("RLHF_LOG_LEVEL") or cfg.log_level
        port = env.get("RLHF_HEALTH_PORT")
        cfg.health_port = (int(port) or None) if port else cfg.health_port
        cfg.webhook_port = int(env.get("RLHF_WEBHOOK_PORT") or cfg.webhook_port)
        cfg.webhook_cert_dir = env.get("RLHF_WEBHOOK_CERT_DIR") or None
        cfg.peering = env.get("RLHF_PEERING") or None
        cfg.allow_secret_references = (env.get("RLHF_ALLOW_SECRET_REFERENCES") or "").strip().lower() in (
            "1", "true", "yes")
        return cfg


@dataclass
class Metrics:
    """Counters for /metrics; written from handler threads, read by the health server."""

    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    rayjobs_created: int = 0
    validation_failures: int = 0
    children_refused: int = 0
    progress_polls: int = 0
    progress_failures: int = 0

    def render(self) -> str:
        lines = ["# HELP rlhf_jobs RLHFJobs by phase.", "# TYPE rlhf_jobs gauge"]
        counts: dict[str, int] = {p.value: 0 for p in Phase}
        for phase in list(self.phases.values()):
            counts[phase] = counts.get(phase, 0) + 1
        lines += [f'rlhf_jobs{{phase="{p}"}} {n}' for p, n in sorted(counts.items())]
        for name, value, help_ in (
            ("rlhf_rayjobs_created_total", self.rayjobs_created, "RayJobs created."),
            ("rlhf_validation_failures_total", self.validation_failures, "RLHFJobs rejected as invalid."),
            ("rlhf_children_refused_total", self.children_refused, "RLHFJobs failed: the API server refused a child."),
            ("rlhf_progress_polls_total", self.progress_polls, "Progress endpoint reads."),
            ("rlhf_progress_poll_failures_total", self.progress_failures, "Progress endpoint reads that failed."),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {value}"]
        return "\n".join(lines) + "\n"
