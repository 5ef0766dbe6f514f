"""Where each step's numbers go: metrics.jsonl, TensorBoard, W&B, the progress endpoint, the reward curve.

``metrics.jsonl`` in the output directory gets one JSON object per step (see
:mod:`rlhf_workers.train` for the keys). On resume, lines after the resumed step are dropped
so the file reads as one run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

from rlhf_api.progress import PROGRESS_PATH, ProgressReport, utc_now

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "reward_curve.png"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """metrics.jsonl always; TensorBoard and W&B when the spec's logging section asks for them."""

    def __init__(self, output_dir: str | Path, logging_spec, *, job_name: str, resume_step: int = 0,
                 config: Optional[dict] = None):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_FILE
        self.history: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resume_step and row.get("step", 0) <= resume_step:
                    self.history.append(row)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self._file = self.path.open("a")
        self.tb = None
        if logging_spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.wandb = None
        if logging_spec.wandb is not None and logging_spec.wandb.mode != "disabled":
            import wandb

            w = logging_spec.wandb
            self.wandb = wandb.init(project=w.project, entity=w.entity, name=w.run_name or job_name, mode=w.mode,
                                    dir=str(self.dir), config=config or {}, resume="allow",
                                    id=f"{job_name}-{hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:8]}")

    def log(self, row: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        self.history.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        step = row["step"]
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_reward_curve(history: list[dict[str, Any]], path: str | Path) -> Optional[Path]:
    """reward/mean and score/mean per step as a PNG (matplotlib, Agg backend)."""
    rows = [r for r in history if r.get("reward/mean") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["reward/mean"] for r in rows], label="reward mean", marker="o" if len(rows) < 40 else None)
    if any(r.get("score/mean") is not None for r in rows):
        ax.plot(steps, [r.get("score/mean") for r in rows], label="score mean", linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("mean per sample")
    ax.set_title("reward curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


class ProgressServer:
    """Serves ``GET /progress`` (a :class:`ProgressReport`) from a daemon thread; port 0 picks a free one."""

    def __init__(self, port: int, host: str = "0.0.0.0"):
        self.report = ProgressReport(heartbeat=utc_now())
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                if self.path.split("?")[0] not in (PROGRESS_PATH, PROGRESS_PATH + "/"):
                    self.send_error(404, "try GET /progress")
                    return
                body = server.snapshot().to_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            logger.warning("progress endpoint not served: port %s: %s", port, exc)
            self.httpd = None
            self.port = None
            return
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, name="rlhf-progress", daemon=True).start()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.report = self.report.model_copy(update={**fields, "heartbeat": utc_now()})

    def snapshot(self) -> ProgressReport:
        with self._lock:
            return self.report

    def close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
