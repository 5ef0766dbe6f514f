"""kopf handlers: one concern each, thin, idempotent.

    launch           RLHFJob created (or operator resumed): validate, snapshot code, create children
    spec_changed     RLHFJob spec edited: pass suspend/deadlines to the RayJob, refuse immutable edits
    rayjob_changed   RayJob status moved: mirror it into the RLHFJob's phase, conditions and Events
    poll_progress    RLHFJob running: read the driver's progress endpoint, flag a stale heartbeat
    validate         admission webhook: the same spec model, before anything is stored

All the decisions live in pure modules (validation, render, status); handlers only read,
call them, and write.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf

from . import status as st
from .kube import Kube, NotOwned, api_client
from .progress import PROGRESS_PORT, ProgressReport
from .render import JOB_LABEL, RenderOptions, code_configmap_name, code_refs, rayjob_name, render
from .spec import GROUP, KIND, PLURAL, TERMINAL_PHASES, VERSION, Phase, RLHFJob, check_agent_source, check_reward_source, immutable_changes
from .validation import FieldError, InvalidJob, parse_job, parse_spec
from .workerconfig import AGENT_FILE, REWARD_FILE

MANAGED_BY = {"app.kubernetes.io/managed-by": "rlhf-operator"}


@dataclass
class OperatorConfig:
    """Operator settings; `from_env` reads what the Helm chart sets."""

    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    worker_image: str = RenderOptions.default_image
    progress_interval: float = 15.0
    stall_seconds: float = 600.0
    progress_url: str = "http://{cluster}-head-svc.{namespace}.svc:{port}/progress"
    progress_timeout: float = 5.0
    code_retry_seconds: float = 30.0
    kubeconfig: Optional[str] = None
    log_level: str = "INFO"
    health_port: Optional[int] = 8080
    webhook_port: int = 9443
    webhook_cert_dir: Optional[str] = None
    peering: Optional[str] = None
    max_workers: int = 16

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
        cfg.kubeconfig = env.get("RLHF_KUBECONFIG") or None
        cfg.log_level = env.get("RLHF_LOG_LEVEL") or cfg.log_level
        port = env.get("RLHF_HEALTH_PORT")
        cfg.health_port = (int(port) or None) if port else cfg.health_port
        cfg.webhook_port = int(env.get("RLHF_WEBHOOK_PORT") or cfg.webhook_port)
        cfg.webhook_cert_dir = env.get("RLHF_WEBHOOK_CERT_DIR") or None
        cfg.peering = env.get("RLHF_PEERING") or None
        return cfg


@dataclass
class Metrics:
    """Counters for /metrics; written from handler threads, read by the health server."""

    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    rayjobs_created: int = 0
    validation_failures: int = 0
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
            ("rlhf_progress_polls_total", self.progress_polls, "Progress endpoint reads."),
            ("rlhf_progress_poll_failures_total", self.progress_failures, "Progress endpoint reads that failed."),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def _job_body(job: dict[str, Any]) -> dict[str, Any]:
    """The minimal body kopf needs to post an Event about an RLHFJob."""
    meta = job["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")}}


def _post(body: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
    for type_, reason, message in events:
        (kopf.warn if type_ == "Warning" else kopf.info)(body, reason=reason, message=message[:1024])


def _owner_name(rayjob: dict[str, Any]) -> Optional[str]:
    for ref in (rayjob.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref.get("name")
    return None


class CodeUnavailable(Exception):
    pass


def _read_code(kube: Kube, job: RLHFJob, current: dict[str, Any]) -> dict[str, str]:
    """Sources for configMapRef code: the job's existing snapshot if it has one, else the user's ConfigMaps."""
    refs = code_refs(job.spec)
    if not refs:
        return {}
    namespace = job.metadata.namespace
    if current.get("codeHash"):
        snapshot = kube.configmap_data(namespace, code_configmap_name(job.metadata.name, current["codeHash"]))
        if snapshot is not None and all(ref.file in snapshot for ref in refs):
            return {ref.file: snapshot[ref.file] for ref in refs}
    sources: dict[str, str] = {}
    for ref in refs:
        data = kube.configmap_data(namespace, ref.config_map)
        if data is None:
            raise CodeUnavailable(f"{ref.field}: ConfigMap {ref.config_map!r} not found in namespace {namespace!r};"
                                  f" create it (kubectl create configmap {ref.config_map} --from-file={ref.key})")
        if ref.key not in data:
            raise CodeUnavailable(f"{ref.field}: ConfigMap {ref.config_map!r} has no key {ref.key!r}"
                                  f" (it has: {', '.join(sorted(data)) or 'nothing'}); set configMapRef.key")
        sources[ref.file] = data[ref.key]
    return sources


def _check_code(sources: dict[str, str], job: RLHFJob) -> None:
    """The same checks as for inline code, on code that came from ConfigMaps."""
    for ref in code_refs(job.spec):
        what = f"ConfigMap {ref.config_map!r} key {ref.key!r}"
        try:
            (check_reward_source if ref.file == REWARD_FILE else check_agent_source)(sources[ref.file], what)
        except ValueError as exc:
            raise InvalidJob([FieldError(ref.field, str(exc))]) from None


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig, metrics: Optional[Metrics] = None) -> Metrics:
    """Register every handler on ``registry`` for an operator configured by ``cfg``."""
    metrics = metrics or Metrics()
    options = RenderOptions(default_image=cfg.worker_image)
    state: dict[str, Any] = {}

    def kube() -> Kube:
        if "kube" not in state:
            state["kube"] = Kube(api_client(cfg.kubeconfig))
        return state["kube"]

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        # Bookkeeping goes to status only: the operator never writes spec or annotations,
        # so GitOps tools see no drift.
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
        settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
        settings.persistence.finalizer = "rlhf.dev/kopf-finalizer"
        settings.posting.level = logging.INFO
        settings.execution.max_workers = cfg.max_workers
        if cfg.webhook_cert_dir:
            settings.admission.server = kopf.WebhookServer(
                addr="0.0.0.0", port=cfg.webhook_port,
                certfile=os.path.join(cfg.webhook_cert_dir, "tls.crt"),
                pkeyfile=os.path.join(cfg.webhook_cert_dir, "tls.key"),
            )
            settings.admission.managed = None  # the Helm chart owns the webhook configuration
        kube()  # connect (and import the client's API modules) before the first job arrives
        if cfg.health_port:
            from .health import start_health_server

            state["health"] = await start_health_server(cfg.health_port, metrics)
        logger.info("rlhf-operator started: namespaces=%s worker image=%s", cfg.namespaces or "all", cfg.worker_image)

    @kopf.on.cleanup(registry=registry)
    async def stop_health(**_: Any) -> None:
        runner = state.pop("health", None)
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ launch

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def launch(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
               namespace: str, name: str, uid: str, logger: kopf.Logger, **_: Any) -> None:
        current = dict(status)
        generation = meta.get("generation")
        metrics.phases[(namespace, name)] = current.get("phase") or Phase.Pending.value
        if current.get("phase") in TERMINAL_PHASES:
            return  # never relaunch a finished job, even if its RayJob is gone

        def fail(reason: str, message: str) -> None:
            metrics.validation_failures += 1
            metrics.phases[(namespace, name)] = Phase.Failed.value
            conditions = st.set_condition(list(current.get("conditions") or []), st.VALIDATED, False, reason, message, generation)
            patch.status.update(phase=Phase.Failed.value, reason=reason, message=message, conditions=conditions,
                                observedGeneration=generation)
            kopf.warn(body, reason=reason, message=message[:1024])

        try:
            job = parse_job({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                             "metadata": {"name": name, "namespace": namespace, "uid": uid,
                                          "labels": dict(meta.get("labels") or {}), "generation": generation},
                             "spec": dict(body.get("spec") or {})})
            sources = _read_code(kube(), job, current)
            _check_code(sources, job)
        except InvalidJob as exc:
            fail(st.VALIDATION_FAILED, "; ".join(str(e) for e in exc.errors))
            raise kopf.PermanentError(f"invalid RLHFJob: {exc}")
        except CodeUnavailable as exc:
            message = f"{exc}; retrying every {int(cfg.code_retry_seconds)} s"
            conditions = st.set_condition(list(current.get("conditions") or []), st.VALIDATED, False,
                                          st.CODE_NOT_FOUND, message, generation)
            if current.get("reason") != st.CODE_NOT_FOUND:
                kopf.warn(body, reason=st.CODE_NOT_FOUND, message=message[:1024])
            patch.status.update(phase=Phase.Pending.value, reason=st.CODE_NOT_FOUND, message=message,
                                conditions=conditions, observedGeneration=generation)
            raise kopf.TemporaryError(str(exc), delay=cfg.code_retry_seconds)

        objects = render(job, sources, options)
        created = []
        try:
            for obj in objects:
                if kube().create_or_adopt(obj, uid):
                    created.append(f"{obj['kind']} {obj['metadata']['name']}")
        except NotOwned as exc:
            fail(st.CHILD_CONFLICT, str(exc))
            raise kopf.PermanentError(str(exc))

        rayjob = objects[-1]
        code_hash = (rayjob["metadata"].get("annotations") or {}).get("rlhf.dev/code-hash")
        conditions = st.set_condition(list(current.get("conditions") or []), st.VALIDATED, True, "Valid",
                                      "spec is valid and the Ray job is launched", generation)
        update = {"rayJobName": rayjob["metadata"]["name"], "observedGeneration": generation, "conditions": conditions}
        if code_hash:
            update["codeHash"] = code_hash
        if not current.get("phase") or current.get("reason") == st.CODE_NOT_FOUND:
            suspended = bool(rayjob["spec"].get("suspend"))
            update.update(phase=Phase.Suspended.value if suspended else Phase.Pending.value,
                          reason="WaitingForAdmission" if suspended and not job.spec.suspend else
                          ("Suspended" if suspended else st.RAYJOB_CREATED),
                          message="RayJob created" + (" suspended" if suspended else ""))
        patch.status.update(update)
        if "RayJob" in " ".join(created):
            metrics.rayjobs_created += 1
            kopf.info(body, reason=st.RAYJOB_CREATED, message=f"created {', '.join(created)}")
            logger.info("created %s", ", ".join(created))

    # ------------------------------------------------------------------ spec edits

    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def spec_changed(body: kopf.Body, old: Optional[dict], new: Optional[dict], meta: kopf.Meta, status: kopf.Status,
                     patch: kopf.Patch, namespace: str, name: str, **_: Any) -> None:
        generation = meta.get("generation")
        conditions = list(status.get("conditions") or [])
        try:
            old_spec, new_spec = parse_spec(old or {}), parse_spec(new or {})
        except InvalidJob as exc:
            message = f"the edited spec is invalid and was not applied: {exc}"
            patch.status["conditions"] = st.set_condition(conditions, st.VALIDATED, False, st.VALIDATION_FAILED, message, generation)
            kopf.warn(body, reason=st.VALIDATION_FAILED, message=message[:1024])
            return
        frozen = immutable_changes(old_spec, new_spec)
        if frozen:
            message = f"{', '.join(frozen)} cannot change on an existing job and was not applied; create a new RLHFJob"
            kopf.warn(body, reason=st.SPEC_IMMUTABLE, message=message)
            patch.status["conditions"] = st.set_condition(conditions, st.VALIDATED, False, st.SPEC_IMMUTABLE, message, generation)
        elif st.get_condition(conditions, st.VALIDATED) and st.get_condition(conditions, st.VALIDATED)["status"] == "False":
            patch.status["conditions"] = st.set_condition(conditions, st.VALIDATED, True, "Valid", "spec is valid", generation)

        rayjob_patch: dict[str, Any] = {}
        if old_spec.suspend != new_spec.suspend:
            rayjob_patch["suspend"] = new_spec.suspend
        for attr, key in (("active_deadline_seconds", "activeDeadlineSeconds"), ("backoff_limit", "backoffLimit"),
                          ("ttl_seconds_after_finished", "ttlSecondsAfterFinished")):
            if getattr(old_spec, attr) != getattr(new_spec, attr):
                rayjob_patch[key] = getattr(new_spec, attr)
        if rayjob_patch and status.get("rayJobName"):
            kube().patch_rayjob(namespace, status["rayJobName"], {"spec": rayjob_patch})
            if "suspend" in rayjob_patch:
                verb = "Suspending" if new_spec.suspend else "Resuming"
                kopf.info(body, reason=verb, message=f"{verb.lower()} RayJob {status['rayJobName']}")
        patch.status["observedGeneration"] = generation

    # ------------------------------------------------------------------ RayJob → status

    def reported(body: kopf.Body, type: Optional[str], **_: Any) -> bool:
        # Until KubeRay reports, there is nothing to mirror (launch already set Pending);
        # filtering here keeps those events off the handler threads.
        return type == "DELETED" or bool((body.get("status") or {}).get("jobDeploymentStatus"))

    @kopf.on.event("ray.io", "v1", "rayjobs", labels=MANAGED_BY, when=reported, registry=registry)
    def rayjob_changed(body: kopf.Body, type: Optional[str], namespace: str, **_: Any) -> None:
        owner = _owner_name(body)
        if owner is None:
            return
        rayjob = dict(body)
        events: list[tuple[str, str, str]] = []

        def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
            events.clear()
            current = job.get("status") or {}
            generation = job["metadata"].get("generation")
            if type == "DELETED":
                if current.get("phase") in (Phase.Succeeded.value, Phase.Failed.value):
                    return None
                message = f"RayJob {rayjob['metadata']['name']} was deleted while the job was {current.get('phase')}"
                events.append(("Warning", st.RAYJOB_MISSING, message))
                conditions = st.phase_conditions(list(current.get("conditions") or []),
                                                 st.Verdict(Phase.Failed.value, st.RAYJOB_MISSING, message), generation)
                return {"phase": Phase.Failed.value, "reason": st.RAYJOB_MISSING, "message": message,
                        "conditions": conditions, "completionTime": st.now_rfc3339()}
            outcome = st.mirror(current, rayjob, generation)
            events.extend(outcome.events)
            return outcome.status or None

        job = kube().update_rlhfjob_status(namespace, owner, change)
        if job is not None:
            _post(_job_body(job), events)
            if type != "DELETED":
                metrics.phases[(namespace, owner)] = st.judge(st.Observation.of(rayjob)).phase

    # ------------------------------------------------------------------ progress

    def running(status: kopf.Status, **_: Any) -> bool:
        return status.get("phase") == Phase.Running.value

    @kopf.timer(GROUP, VERSION, PLURAL, interval=cfg.progress_interval, when=running, registry=registry)
    def poll_progress(body: kopf.Body, status: kopf.Status, meta: kopf.Meta, namespace: str, name: str,
                      logger: kopf.Logger, **_: Any) -> None:
        url = cfg.progress_url.format(cluster=status.get("rayClusterName") or f"{name}-raycluster",
                                      namespace=namespace, port=PROGRESS_PORT, job=name)
        metrics.progress_polls += 1
        report: Optional[ProgressReport] = None
        try:
            with urllib.request.urlopen(url, timeout=cfg.progress_timeout) as response:
                report = ProgressReport.from_json(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            metrics.progress_failures += 1
            logger.debug("progress endpoint %s unreachable: %s", url, exc)
        events: list[tuple[str, str, str]] = []

        def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
            events.clear()
            current = job.get("status") or {}
            if current.get("phase") != Phase.Running.value:
                return None
            fields: dict[str, Any] = {}
            known = current.get("progress") or {}
            heartbeat = known.get("heartbeat")
            if report is not None:
                progress = {k: v for k, v in {
                    "step": report.step, "totalSteps": report.total_steps, "episode": report.episode,
                    "rewardMean": report.reward_mean, "scoreMean": report.score_mean, "kl": report.kl,
                    "samplesPerSecond": report.samples_per_second, "lastWeightSync": report.last_weight_sync,
                    "heartbeat": report.heartbeat, "updated": st.now_rfc3339(),
                }.items() if v is not None}
                fields["progress"] = progress
                heartbeat = report.heartbeat or heartbeat
                if report.last_checkpoint and current.get("lastCheckpoint") != report.last_checkpoint.path:
                    fields["lastCheckpoint"] = report.last_checkpoint.path
                    events.append(("Normal", "Checkpointed", f"step {report.last_checkpoint.step} saved to {report.last_checkpoint.path}"))
            if heartbeat is None:
                running_cond = st.get_condition(current.get("conditions") or [], st.RUNNING)
                heartbeat = running_cond.get("lastTransitionTime") if running_cond else None
            stall = st.stall_update(current, heartbeat, cfg.stall_seconds, job["metadata"].get("generation"))
            if stall is not None:
                fields["conditions"], event = stall
                events.append(event)
            return fields or None

        job = kube().update_rlhfjob_status(namespace, name, change)
        if job is not None:
            _post(_job_body(job), events)

    # ------------------------------------------------------------------ admission

    if not cfg.webhook_cert_dir:
        return metrics  # kopf refuses admission handlers without a server to serve them

    @kopf.on.validate(GROUP, VERSION, PLURAL, id="validate-rlhfjob", registry=registry)
    def validate(spec: kopf.Spec, old: Optional[dict], operation: Optional[str], **_: Any) -> None:
        try:
            new_spec = parse_spec(dict(spec))
        except InvalidJob as exc:
            raise kopf.AdmissionError("; ".join(str(e) for e in exc.errors), code=422)
        if operation == "UPDATE" and old and old.get("spec"):
            try:
                old_spec = parse_spec(old["spec"])
            except InvalidJob:
                return
            frozen = immutable_changes(old_spec, new_spec)
            if frozen:
                raise kopf.AdmissionError(f"{', '.join(frozen)} cannot change on an existing RLHFJob; create a new one",
                                          code=422)

    return metrics
