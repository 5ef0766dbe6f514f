"""Operator integration tests: the real kopf runtime, in a thread, against the API emulator."""

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf
import pytest

from rlhf_operator.handlers import OperatorConfig, register
from support.fixtures import kube  # noqa: F401  (fixture)
from support.kopf_thread import KopfRunner

NS = "team-a"
REWARD = "def reward_func(queries, prompts, labels):\n    return {'rewards': [float(len(q)) for q in queries]}\n"


@pytest.fixture
def config(kube):
    kube.create_namespace(NS)
    return OperatorConfig(kubeconfig=kube.kubeconfig_path, health_port=None, progress_interval=0.3,
                          stall_seconds=3600, code_retry_seconds=0.3, worker_image="example/workers:test")


class Operator:
    """Start/stop the operator, possibly several times (restarts) over one emulator."""

    def __init__(self, kube, config):
        self.kube, self.config, self.runner = kube, config, None

    def start(self, **overrides):
        cfg = replace(self.config, **overrides) if overrides else self.config
        registry = kopf.OperatorRegistry()
        self.metrics = register(registry, cfg)
        self.runner = KopfRunner(self.kube, registry=registry, clusterwide=True).start()
        return self

    def stop(self):
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def restart(self):
        self.stop()
        return self.start()


@pytest.fixture
def operator(kube, config):
    op = Operator(kube, config)
    yield op
    op.stop()


def rlhfjob(name="demo", spec=None, labels=None):
    body = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": spec or {
            "model": {"path": "/models/tiny"},
            "data": {"prompts": "/data/p.jsonl", "labelKey": "answer"},
            "reward": {"function": {"inline": REWARD}},
            "algorithm": {"advantageEstimator": "rloo", "nSamplesPerPrompt": 4},
            "backoffLimit": 1,
        },
    }
    return body


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

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def progress_server():
    server = ProgressServer()
    yield server
    server.close()
