"""What the operator tests share: the job they create, the operator they start, and the
helpers that play KubeRay and wait on the job's status. Fixtures live in tests/operator/conftest.py.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import kopf

from rlhf_operator.config import OperatorConfig
from rlhf_operator.context import OperatorContext
from rlhf_operator.handlers import register

from . import jobs
from .kopf_thread import KopfRunner

NS = jobs.NAMESPACE  # "team-a"
REWARD = "def reward_func(queries, prompts, labels):\n    return {'rewards': [float(len(q)) for q in queries]}\n"
RAYJOBS = "ray.io/v1/rayjobs"
JOBS = "rlhf.dev/v1alpha1/rlhfjobs"


# The operator tier's job: valid, with a reward whose code the tests compare, and one retry.
SPEC = {
    "model": {"path": "/models/tiny"},
    "data": {"prompts": "/data/p.jsonl", "labelKey": "answer"},
    "reward": {"function": {"inline": REWARD}},
    "algorithm": {"advantageEstimator": "rloo", "nSamplesPerPrompt": 4},
    "backoffLimit": 1,
}


def rlhfjob(name: str = "demo", spec: Optional[dict[str, Any]] = None,
            labels: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """An RLHFJob in NS around a copy of ``spec`` (SPEC if none), built by support.jobs."""
    return jobs.rlhfjob(spec or SPEC, name=name, namespace=NS, labels=labels or {})


class Operator:
    """Start/stop the operator, possibly several times (restarts) over one emulator.

    Each start registers the handlers on a fresh registry and hands kopf a fresh
    OperatorContext as its memo, as `rlhf operator` does; ``memo=False`` hands none, as
    `kopf run` does (the configure handler then installs the context register() made).
    """

    def __init__(self, kube, config: OperatorConfig):
        self.kube, self.config, self.runner = kube, config, None
        self.context: Optional[OperatorContext] = None

    def start(self, memo: bool = True, **overrides: Any) -> "Operator":
        cfg = replace(self.config, **overrides) if overrides else self.config
        registry = kopf.OperatorRegistry()
        self.metrics = register(registry, cfg)
        self.context = OperatorContext(cfg, self.metrics) if memo else None
        self.runner = KopfRunner(self.kube, registry=registry, clusterwide=True, memo=self.context).start()
        return self

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def restart(self) -> "Operator":
        self.stop()
        return self.start()


def job_status(kube, name: str = "demo") -> dict[str, Any]:
    return (kube.get(JOBS, name, NS) or {}).get("status") or {}


def wait_phase(kube, phase: str, reason: Optional[str] = None, name: str = "demo", timeout: float = 15) -> dict[str, Any]:
    """Wait until the job's status has ``phase`` (and ``reason``, if given); return that status."""
    def reached():
        status = job_status(kube, name)
        return status if status.get("phase") == phase and (reason is None or status.get("reason") == reason) else None
    return kube.wait_for(reached, timeout=timeout, message=lambda: f"phase {phase}/{reason}; status now {job_status(kube, name)}")


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def kuberay(kube, name: str = "demo", **status: Any) -> None:
    """Play KubeRay: write the RayJob's status as KubeRay would."""
    kube.patch_status(RAYJOBS, name, status, NS)


def reasons(kube, name: str = "demo") -> list[str]:
    """The reasons of the job's Events, oldest first."""
    return [e["reason"] for e in kube.events(NS, involved_name=name, involved_kind="RLHFJob")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProgressServer:
    """A real local HTTP server playing the worker driver's progress endpoint."""

    def __init__(self):
        self.report = {"schemaVersion": 1, "state": "starting", "step": 0, "heartbeat": ""}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps(outer.report).encode()
                self.send_response(200 if self.path == "/progress" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/progress"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_with_webhook(kube, operator: "Operator", cert_dir) -> tuple[int, "ssl.SSLContext"]:
    """Start the operator serving its admission webhook with a fresh self-signed certificate in
    ``cert_dir``; returns the port and a TLS context that trusts it, once the server listens
    (kopf starts it after the startup handlers)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(cert_dir / "tls.key"), "-out", str(cert_dir / "tls.crt")],
                   check=True, capture_output=True)
    port = free_port()
    operator.start(webhook_cert_dir=str(cert_dir), webhook_port=port)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    kube.wait_for(listening, timeout=15)
    return port, ssl.create_default_context(cafile=str(cert_dir / "tls.crt"))
