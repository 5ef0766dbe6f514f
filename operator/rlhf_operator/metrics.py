"""The operator's Prometheus metrics, on prometheus-client: one registry per running operator.

    Metrics.note_job     a job's status as written or seen: its phase, Stalled and RewardFaults
    Metrics.note_report  a progress report read from a running job's driver
    Metrics.forget       a job is gone: its series go with it
    Metrics.timed        a kopf handler, its duration observed in rlhf_reconcile_duration_seconds
    Metrics.api_error    a failed Kubernetes API call, counted by verb and HTTP code

Counters and histograms are prometheus-client's own (thread-safe). What is per job is kept in a
table under a lock and turned into gauges when Prometheus scrapes (``_JobCollector``), so a
deleted job's series disappear with it and the heartbeat age is as old as the scrape says.
Each Metrics has its own CollectorRegistry: tests run several operators in one process.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from rlhf_api.jobstatus import DEGRADED, REWARD_FAULTS, STALLED, Phase
from rlhf_api.progress import ProgressReport

from .status import parse_time

CONTENT_TYPE = CONTENT_TYPE_LATEST
JOB_LABELS = ("namespace", "rlhfjob")  # not "job": Prometheus gives every target one
# Kubernetes verbs of the HTTP methods the operator's client sends.
VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# What a progress report says, as gauges: (metric, help, the report's field).
REPORT_GAUGES = (
    ("rlhf_job_step", "Training step the job's driver last reported.", "step"),
    ("rlhf_job_total_steps", "Steps the job will run in all, as its driver reported.", "total_steps"),
    ("rlhf_job_reward_mean", "Mean reward of the last step's samples.", "reward_mean"),
    ("rlhf_job_score_mean", "Mean score (the reward before shaping) of the last step's samples.", "score_mean"),
    ("rlhf_job_kl", "KL divergence of the policy from the reference, last step.", "kl"),
    ("rlhf_job_reward_error_rate", "Faulted share of reward calls over the driver's fault window.",
     "reward_error_rate"),
)
# Conditions, as 0/1 gauges per job: (metric, help, condition type).
CONDITION_GAUGES = (
    ("rlhf_job_stalled", "1 while the job's Stalled condition is True (no heartbeat for stallSeconds).", STALLED),
    ("rlhf_job_reward_faults", "1 once the job's RewardFaults condition is True (stopped on reward faults).",
     REWARD_FAULTS),
    ("rlhf_job_degraded", "1 while the job's Degraded condition is True (API errors past a bound).", DEGRADED),
)


@dataclass
class _Job:
    phase: str = Phase.Pending.value
    conditions: tuple[str, ...] = ()  # the types that are True
    report: Optional[ProgressReport] = None
    heartbeat: Optional[float] = None  # epoch seconds
    info: tuple[str, str, str] = ("", "", "")  # its RayJob, Ray cluster and Ray dashboard URL


class _JobCollector:
    """Per-job gauges and jobs by phase, made from the job table at each scrape."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = self.metrics.snapshot()
        by_phase = GaugeMetricFamily("rlhf_jobs", "RLHFJobs by phase.", labels=["phase"])
        counts = {p.value: 0 for p in Phase}
        for job in jobs.values():
            counts[job.phase] = counts.get(job.phase, 0) + 1
        for phase, n in sorted(counts.items()):
            by_phase.add_metric([phase], n)
        yield by_phase
        phase = GaugeMetricFamily("rlhf_job_phase", "1 for each job, labelled with its current phase.",
                                  labels=[*JOB_LABELS, "phase"])
        for (ns, name), job in jobs.items():
            phase.add_metric([ns, name, job.phase], 1)
        yield phase
        info = GaugeMetricFamily("rlhf_job_info", "1 for each job, labelled with its RayJob, Ray cluster and the"
                                 " Ray dashboard's URL (status.dashboardURL).",
                                 labels=[*JOB_LABELS, "rayjob", "ray_cluster", "dashboard_url"])
        for (ns, name), job in jobs.items():
            info.add_metric([ns, name, *job.info], 1)
        yield info
        yield from self._reports(jobs)
        for metric, help_, condition in CONDITION_GAUGES:
            family = GaugeMetricFamily(metric, help_, labels=list(JOB_LABELS))
            for key, job in jobs.items():
                family.add_metric(list(key), 1 if condition in job.conditions else 0)
            yield family

    @staticmethod
    def _reports(jobs: dict[tuple[str, str], _Job]) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        for metric, help_, field in REPORT_GAUGES:
            family = GaugeMetricFamily(metric, help_, labels=list(JOB_LABELS))
            for key, job in jobs.items():
                value = getattr(job.report, field, None) if job.report is not None else None
                if value is not None:
                    family.add_metric(list(key), float(value))
            yield family
        age = GaugeMetricFamily("rlhf_job_heartbeat_age_seconds",
                                "Seconds since the job's training loop last reported a heartbeat.",
                                labels=list(JOB_LABELS))
        for key, job in jobs.items():
            if job.heartbeat is not None:
                age.add_metric(list(key), max(0.0, now - job.heartbeat))
        yield age


class Metrics:
    """The operator's metrics: written from kopf's handler threads and loop, read on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}
        r = self.registry
        self.reconcile_seconds = Histogram(
            "rlhf_reconcile_duration_seconds", "Time a kopf handler of the operator took, by handler.",
            ["handler"], registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.api_errors = Counter("rlhf_api_errors", "Kubernetes API calls that failed, by verb and HTTP code"
                                  " (code 0: no answer).", ["verb", "code"], registry=r)
        self.rayjobs_created_total = Counter("rlhf_rayjobs_created", "RayJobs created.", registry=r)
        self.validation_failures_total = Counter("rlhf_validation_failures", "RLHFJobs rejected as invalid.",
                                                 registry=r)
        self.children_refused_total = Counter("rlhf_children_refused",
                                              "RLHFJobs failed: the API server refused a child.", registry=r)
        self.progress_polls_total = Counter("rlhf_progress_polls", "Progress endpoint reads.", registry=r)
        self.progress_failures_total = Counter("rlhf_progress_poll_failures", "Progress endpoint reads that failed.",
                                               registry=r)
        r.register(_JobCollector(self))

    # ------------------------------------------------------------------ counts (read by tests and logs)

    def _count(self, name: str) -> int:
        return int(self.registry.get_sample_value(name) or 0)

    rayjobs_created = property(lambda self: self._count("rlhf_rayjobs_created_total"))
    validation_failures = property(lambda self: self._count("rlhf_validation_failures_total"))
    children_refused = property(lambda self: self._count("rlhf_children_refused_total"))
    progress_polls = property(lambda self: self._count("rlhf_progress_polls_total"))
    progress_failures = property(lambda self: self._count("rlhf_progress_poll_failures_total"))

    @property
    def phases(self) -> dict[tuple[str, str], str]:
        """Each known job's phase, as last written or seen."""
        with self._lock:
            return {key: job.phase for key, job in self._jobs.items()}

    def snapshot(self) -> dict[tuple[str, str], _Job]:
        with self._lock:
            return {key: _Job(job.phase, job.conditions, job.report, job.heartbeat, job.info)
                    for key, job in self._jobs.items()}

    # ------------------------------------------------------------------ writes

    def note_job(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A job's status as the operator wrote or saw it."""
        true = tuple(c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True")
        with self._lock:
            job = self._jobs.setdefault((namespace, name), _Job())
            job.phase = status.get("phase") or Phase.Pending.value
            job.conditions = true
            job.info = (status.get("rayJobName") or "", status.get("rayClusterName") or "",
                        status.get("dashboardURL") or "")

    def note_report(self, namespace: str, name: str, report: ProgressReport) -> None:
        """What a running job's driver last reported."""
        beat = parse_time(report.heartbeat) if report.heartbeat else None
        with self._lock:
            job = self._jobs.setdefault((namespace, name), _Job(phase=Phase.Running.value))
            job.report = report
            if beat is not None:
                job.heartbeat = beat.timestamp()

    def forget(self, namespace: str, name: str) -> None:
        """The job is deleted: its series leave the next scrape."""
        with self._lock:
            self._jobs.pop((namespace, name), None)

    def api_error(self, method: str, code: int) -> None:
        self.api_errors.labels(VERBS.get(method.upper(), method.lower()), str(code)).inc()

    def timed(self, handler: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a kopf handler, sync or async) with its duration observed under ``handler``."""
        observe = self.reconcile_seconds.labels(handler).observe
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    observe(time.perf_counter() - start)
            return timed_async

        @functools.wraps(fn)
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                observe(time.perf_counter() - start)
        return timed_sync

    def render(self) -> bytes:
        """The exposition text Prometheus scrapes."""
        return generate_latest(self.registry)
