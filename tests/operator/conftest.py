"""Operator integration tests: the real kopf runtime, in a thread, against the API emulator.

The helpers these tests share are in support/operator_env.py; the fixtures are here.
"""

import pytest

from rlhf_operator.config import OperatorConfig
from support.fixtures import kube  # noqa: F401  (fixture)
from support.operator_env import NS, RAYJOBS, Operator, ProgressServer, kuberay, rlhfjob, wait_phase


@pytest.fixture
def config(kube):
    kube.create_namespace(NS)
    return OperatorConfig(kubeconfig=kube.kubeconfig_path, health_port=None, progress_interval=0.3,
                          stall_seconds=3600, code_retry_seconds=0.3, worker_image="example/workers:test",
                          # The emulator runs no pods: tests of the code-check pod turn it on and play the kubelet.
                          preflight_pods=False)


@pytest.fixture
def operator(kube, config):
    op = Operator(kube, config)
    yield op
    op.stop()


@pytest.fixture
def running_job(kube, operator):
    """Create → RayJob → Running, the set-up many tests share: ``running_job(spec=None, **settings)``
    starts the operator (with ``settings`` over the test config), creates the job ``demo``
    (``spec``: rlhfjob()'s if None), waits for its RayJob, plays KubeRay up to a running Ray job,
    and returns the job's status once it is Running."""
    def start(spec=None, **settings):
        operator.start(**settings)
        kube.create(rlhfjob(spec=spec))
        kube.wait_for(lambda: kube.get(RAYJOBS, "demo", NS))
        kuberay(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")
        return wait_phase(kube, "Running")
    return start


@pytest.fixture
def progress_server():
    server = ProgressServer()
    yield server
    server.close()
