"""
Test support: a Kubernetes API emulator (built on KMock) and a kopf runner.

* :mod:`tests.support.kube_emulator` — :class:`KubeEmulator`, an in-process
  Kubernetes API server emulator speaking real HTTP (list/watch/patch/...).
* :mod:`tests.support.kopf_thread` — :class:`KopfRunner`, the real kopf
  operator in its own thread, pointed at an emulator.
* :mod:`tests.support.fixtures` — pytest fixtures ``kube``, ``kube_module``,
  ``kopf_runner``; enable with ``pytest_plugins = ["tests.support.fixtures"]``.
"""
from tests.support.kube_emulator import ApiError, ApiResource, KubeEmulator, ObjectStore, wait_for

__all__ = ['ApiError', 'ApiResource', 'KubeEmulator', 'ObjectStore', 'wait_for']
