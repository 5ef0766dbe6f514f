"""A stand-in for KubeRay's RayJob controller over the API emulator, with KubeRay's preconditions.

Each ``reconcile`` is one pass of rayjob_controller.go's Reconcile (KubeRay v1.7.0) for the
states the operator meets: New → Initializing → Running. It writes what KubeRay writes, in
the same order, and stops where KubeRay stops:

- an invalid RayJob gets ``ValidationFailed`` (utils/validation.go), a dead end;
- in Initializing it creates the RayCluster and the head Service built from the head
  container's ports (common/service.go), and waits until the test reports the cluster's pods
  running (``cluster_ready``), as KubeRay waits for ``status.state: ready``;
- it then looks up the ``dashboard`` port on that Service; when there is none, the RayJob
  stays Initializing with no status change (``last_error`` says why), for ever;
- else it records ``dashboardURL``, creates the submitter Job and moves to Running; the next
  pass creates the RayJob's own ``{rayjob}-head-svc``.

The Ray job's own progress (RUNNING, SUCCEEDED, ...) is the dashboard's to report: the test
says it with ``ray_job``.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any, Optional

from support import kuberay

RAYJOBS, RAYCLUSTERS, SERVICES, JOBS = "ray.io/v1/rayjobs", "ray.io/v1/rayclusters", "v1/services", "batch/v1/jobs"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned_by(obj: dict[str, Any]) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    return [{"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": True}]


class FakeKubeRay:
    def __init__(self, kube, namespace: str, seed: int = 0):
        self.kube, self.namespace = kube, namespace
        self.rng = random.Random(seed)
        self.ready: set[str] = set()
        self.last_error: Optional[str] = None

    def rayjob(self, name: str) -> Optional[dict[str, Any]]:
        return self.kube.get(RAYJOBS, name, self.namespace)

    def _write(self, name: str, **status: Any) -> None:
        self.kube.patch_status(RAYJOBS, name, status, self.namespace)

    def reconcile(self, name: str) -> str:
        """One pass; returns the jobDeploymentStatus after it."""
        rayjob = self.rayjob(name)
        status = rayjob.get("status") or {}
        state = status.get("jobDeploymentStatus") or ""
        self.last_error = None
        error = kuberay.validation_error(rayjob)
        if error:
            self._write(name, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed", message=error)
            return "ValidationFailed"
        if state == "":
            self._write(name, jobId=kuberay.job_id(rayjob, self.rng), jobStatus="", jobDeploymentStatus="Initializing",
                        rayClusterName=kuberay.cluster_name(name, self.rng), startTime=_now())
            return "Initializing"
        if state == "Initializing":
            return self._initializing(rayjob)
        if state == "Running":
            self._ensure_rayjob_service(rayjob)
        return state

    def _initializing(self, rayjob: dict[str, Any]) -> str:
        name, status = rayjob["metadata"]["name"], rayjob["status"]
        if rayjob["spec"].get("suspend"):
            self._write(name, jobDeploymentStatus="Suspending")
            return "Suspending"
        cluster = self._get_or_create_cluster(rayjob)
        if not status.get("dashboardURL"):
            if cluster["metadata"]["name"] not in self.ready:
                self._write(name, rayClusterStatus=cluster.get("status") or {})
                return "Initializing"
            service = self.kube.get(SERVICES, kuberay.head_service_name(cluster["metadata"]["name"]), self.namespace)
            try:
                url = kuberay.dashboard_url(service)
            except kuberay.DashboardPortNotFound as exc:
                self.last_error = str(exc)  # KubeRay logs it and requeues; the status does not change
                return "Initializing"
            self._write(name, dashboardURL=url)
            rayjob = self.rayjob(name)
        head_image = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        if self.kube.get(JOBS, name, self.namespace) is None:
            job = kuberay.submitter_job(rayjob, head_image)
            job["metadata"]["ownerReferences"] = _owned_by(rayjob)
            self.kube.create(job, self.namespace)
        self._write(name, jobDeploymentStatus="Running")
        return "Running"

    def _get_or_create_cluster(self, rayjob: dict[str, Any]) -> dict[str, Any]:
        cluster_name = rayjob["status"]["rayClusterName"]
        cluster = self.kube.get(RAYCLUSTERS, cluster_name, self.namespace)
        if cluster is not None:
            return cluster
        labels = {**rayjob["metadata"].get("labels", {}), "ray.io/originated-from-cr-name": rayjob["metadata"]["name"],
                  "ray.io/originated-from-crd": "RayJob", "ray.io/job-submission-mode": "K8sJobMode"}
        cluster = self.kube.create({
            "apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": cluster_name, "namespace": self.namespace, "labels": labels,
                         "annotations": dict(rayjob["metadata"].get("annotations") or {}),
                         "ownerReferences": _owned_by(rayjob)},
            "spec": rayjob["spec"]["rayClusterSpec"],
        }, self.namespace)
        service = kuberay.head_service(cluster_name, self.namespace, cluster["spec"])
        service["metadata"]["ownerReferences"] = _owned_by(cluster)
        self.kube.create(service, self.namespace)
        return cluster

    def _ensure_rayjob_service(self, rayjob: dict[str, Any]) -> None:
        """rayjob_controller.go reconcileServices: ``{rayjob}-head-svc``, the cluster's head Service's twin."""
        name = kuberay.rayjob_head_service_name(rayjob["metadata"]["name"])
        if self.kube.get(SERVICES, name, self.namespace) is not None:
            return
        cluster = self.kube.get(RAYCLUSTERS, rayjob["status"]["rayClusterName"], self.namespace)
        service = kuberay.head_service(cluster["metadata"]["name"], self.namespace, cluster["spec"])
        service["metadata"] = {"name": name, "namespace": self.namespace, "ownerReferences": _owned_by(rayjob),
                               "labels": {"ray.io/originated-from-cr-name": rayjob["metadata"]["name"],
                                          "ray.io/originated-from-crd": "RayJob", "ray.io/node-type": "head"}}
        self.kube.create(service, self.namespace)

    # ------------------------------------------------------------------ what the test reports

    def cluster_ready(self, name: str) -> None:
        """The RayCluster's head and desired workers all run: KubeRay writes ``state: ready``."""
        cluster_name = self.rayjob(name)["status"]["rayClusterName"]
        cluster = self.kube.get(RAYCLUSTERS, cluster_name, self.namespace)
        workers = kuberay.desired_workers(cluster["spec"])
        self.kube.patch_status(RAYCLUSTERS, cluster_name, {
            "state": "ready", "desiredWorkerReplicas": workers, "readyWorkerReplicas": workers,
            "availableWorkerReplicas": workers}, self.namespace)
        self.ready.add(cluster_name)

    def ray_job(self, name: str, job_status: str) -> None:
        """The dashboard reports the Ray job's state; a terminal one ends the RayJob as KubeRay does
        once the submitter has finished too (``ray job logs --follow`` returns at the job's end)."""
        if job_status in ("SUCCEEDED", "STOPPED"):
            self._write(name, jobStatus=job_status, jobDeploymentStatus="Complete", endTime=_now(),
                        succeeded=1 if job_status == "SUCCEEDED" else 0)
        elif job_status == "FAILED":
            self._write(name, jobStatus="FAILED", jobDeploymentStatus="Failed", reason="AppFailed", endTime=_now(),
                        message="Job failed", failed=1)
        else:
            self._write(name, jobStatus=job_status)

    def run_to(self, name: str, state: str, *, max_passes: int = 10) -> str:
        """Reconcile until ``state`` (or the passes run out: then the state KubeRay is stuck in)."""
        current = ""
        for _ in range(max_passes):
            current = self.reconcile(name)
            if current == state:
                break
        return current
