"""
Pytest fixtures for operator integration tests against the KMock-based emulator.

Import them into a test module or conftest (``from support.fixtures import kube, kopf_runner``;
``tests/conftest.py`` puts ``tests/`` on ``sys.path``), or list ``support.fixtures`` in ``pytest_plugins``.

* ``kube`` — a fresh :class:`KubeEmulator` per test, also made the process-wide
  default for ``kubernetes.client`` / ``kubernetes.config`` / ``$KUBECONFIG``
  (see :meth:`KubeEmulator.use_as_default`) for the duration of the test.
* ``kube_module`` — the same, shared by a test module (state accumulates!).
  To run ``kopf_runner`` on it, override ``kube`` locally::

      @pytest.fixture
      def kube(kube_module):
          return kube_module

* ``kopf_runner`` — a factory: ``kopf_runner('pkg.module', namespaces=['ns1'])``
  starts the real kopf operator for that module in a thread (waits for its
  readiness) and returns a :class:`KopfRunner`; all runners are stopped at
  teardown (before the emulator), and operator failures fail the test.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .emulator import KubeEmulator
from .kopf_thread import KopfRunner

__all__ = ['kube', 'kube_module', 'kopf_runner']


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator, emulator.use_as_default():
        yield emulator


@pytest.fixture(scope='module')
def kube_module() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator, emulator.use_as_default():
        yield emulator


@pytest.fixture
def kopf_runner(kube: KubeEmulator) -> Iterator[Callable[..., KopfRunner]]:
    runners: list[KopfRunner] = []

    def start(module: str | None = None, **kwargs: Any) -> KopfRunner:
        runner = KopfRunner(kube, module, **kwargs)
        runners.append(runner)
        return runner.start()

    yield start

    failures: list[BaseException] = []
    for runner in reversed(runners):
        try:
            runner.stop()
        except BaseException as e:  # noqa: BLE001 -- stop all, then report
            failures.append(e)
    if failures:
        raise failures[0]
