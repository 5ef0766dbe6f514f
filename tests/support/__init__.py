"""
Test support: a Kubernetes API emulator (built on KMock), a kopf runner, job documents.

* :mod:`support.emulator` — :class:`KubeEmulator`, an in-process
  Kubernetes API server emulator speaking real HTTP (list/watch/patch/...).
* :mod:`support.kopf_thread` — :class:`KopfRunner`, the real kopf
  operator in its own thread, pointed at an emulator.
* :mod:`support.fixtures` — pytest fixtures ``kube``, ``kube_module``,
  ``kopf_runner``; enable with ``from support.fixtures import kube, kopf_runner``.
* :mod:`support.jobs` — RLHFJob documents for every tier: ``rlhfjob``, ``job``
  (the minimal job with overrides by path), ``runnable_spec``/``merge``/``write_job``.
* :mod:`support.operator_env` — the operator tier's helpers: the operator in a thread, a
  progress endpoint, waiting for phases.
* :mod:`support.kuberay`, :mod:`support.fake_kuberay` — KubeRay 1.7's rules, and a stand-in for
  its RayJob controller that keeps its preconditions; :mod:`support.podview` — a rendered head
  pod run as its containers would see it.
"""
from .emulator import ApiError, ApiResource, KubeEmulator, ObjectStore, wait_for

__all__ = ['ApiError', 'ApiResource', 'KubeEmulator', 'ObjectStore', 'wait_for']
