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

import asyncio
import functools
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import kopf
from rlhf_api.base import snake_case
from rlhf_api.contract import check_agent_source, check_reward_source
from rlhf_api.jobstatus import TERMINAL_PHASES, Phase
from rlhf_api.names import CODE_HASH_ANNOTATION, GROUP, KIND, MANAGED_BY, PLURAL, VERSION
from rlhf_api.progress import PROGRESS_PORT, ProgressReport
from rlhf_api.spec import MUTABLE_FIELDS, RLHFJob, immutable_changes
from rlhf_api.validation import FieldError, InvalidJob, parse_job, parse_spec
from rlhf_api.workerconfig import REWARD_FILE

from . import status as st
from .config import Metrics, OperatorConfig
from .kube import Kube, NotOwned, api_client, is_transient
from .render import RenderOptions, code_refs, render, snapshot_configmap_name

LAUNCH_RECORD_WAIT = 30.0  # seconds the RayJob mirror waits for launch to record rayJobName
API_RETRY_SECONDS = 3.0  # retry delay after an API server outage (kopf's default is 60 s)
log = logging.getLogger(__name__)


def _job_ref(job: Any) -> dict[str, Any]:
    """What an Event needs of an RLHFJob (from a kopf body or a dict read from the API)."""
    meta = job["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")}}


def _owner_name(rayjob: dict[str, Any]) -> Optional[str]:
    for ref in (rayjob.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return ref.get("name")
    return None


def retry_api_outages(handler):
    """Retry a handler soon when the API server was unreachable or overloaded, instead of after
    kopf's default minute: nothing was lost, the handler is idempotent."""
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise kopf.TemporaryError(f"Kubernetes API unavailable: {exc}", delay=API_RETRY_SECONDS) from exc
            raise
    return wrapper


class CodeUnavailable(Exception):
    pass


def _read_code(kube: Kube, job: RLHFJob, current: dict[str, Any]) -> dict[str, str]:
    """Sources for configMapRef code: the job's existing snapshot if it has one, else the user's ConfigMaps."""
    refs = code_refs(job.spec)
    if not refs:
        return {}
    namespace = job.metadata.namespace
    if current.get("codeHash"):
        snapshot = kube.configmap_data(namespace, snapshot_configmap_name(job.metadata.name, current["codeHash"]))
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


class _RLHFJobDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's diff-base in status, built for RLHFJobs only, and without copying their status.

    On every event of every watched kind, kopf deep-copies the whole object (twice) to find
    what changed since the last handled state, and then drops the status from the copy. Only
    RLHFJobs have change handlers here; RayJobs have an event handler alone, so their copy is
    never compared. Copying the large RayJob bodies was about a tenth of the operator's CPU
    with hundreds of jobs.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") not in (KIND, None):  # unknown kind: build it, as kopf would
            return kopf.BodyEssence()
        if not any(path[:1] == ("status",) for path in extra_fields or ()):
            # No handler watches a status field: leave the status out of the copy.
            body = {key: value for key, value in body.items() if key != "status"}
        return super().build(body=body, extra_fields=extra_fields)


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig, metrics: Optional[Metrics] = None) -> Metrics:
    """Register every handler on ``registry`` for an operator configured by ``cfg``."""
    metrics = metrics or Metrics()
    options = RenderOptions(default_image=cfg.worker_image, progress_linger_seconds=cfg.progress_linger_seconds)
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
        settings.persistence.diffbase_storage = _RLHFJobDiffBase(field="status.kopf.diffbase")
        settings.persistence.finalizer = "rlhf.dev/kopf-finalizer"
        # kopf posts its own warnings and errors (a handler failing, retrying) as Events; the
        # job's story (created, provisioning, running, ...) is posted by `post` below.
        settings.posting.level = logging.WARNING
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

            try:
                state["health"] = await start_health_server(cfg.health_port, metrics)
            except OSError as exc:
                # Jobs matter more than probes: run without /healthz and /metrics rather than not at all.
                logger.error("/healthz and /metrics are not served: port %s: %s (set RLHF_HEALTH_PORT to a free"
                             " port, or 0 to turn them off)", cfg.health_port, exc)
        logger.info("rlhf-operator started: namespaces=%s worker image=%s", cfg.namespaces or "all", cfg.worker_image)

    @kopf.on.cleanup(registry=registry)
    async def stop_health(**_: Any) -> None:
        runner = state.pop("health", None)
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ launch

    # Non-terminal jobs → their status as this operator last wrote or saw it. The background
    # loop polls progress from it; kept up to date at the write points, so no watch handler
    # has to look at every RLHFJob event.
    active: dict[tuple[str, str], dict[str, Any]] = {}

    def note(namespace: str, name: str, status: Optional[dict[str, Any]]) -> None:
        key = (namespace, name)
        if status is None:  # the job is gone
            active.pop(key, None)
            metrics.phases.pop(key, None)
            return
        metrics.phases[key] = status.get("phase") or Phase.Pending.value
        if status.get("phase") in TERMINAL_PHASES:
            active.pop(key, None)
        else:
            active[key] = status

    def post(job: Any, events: list[tuple[str, str, str]]) -> None:
        """Events tell the job's story in `kubectl describe`; posted by the operator's own client
        (kopf posts only its own warnings and errors, see configure)."""
        ref = _job_ref(job)
        for type_, reason, message in events:
            kube().post_event(ref, type_, reason, message)

    def write_status(namespace: str, name: str, change, known: Optional[kopf.Body] = None) -> Optional[dict[str, Any]]:
        """All status writes go through here, resourceVersion-guarded, so a handler working from an
        older snapshot never overwrites what another one wrote. ``known``: the handler's own body,
        tried first (usually still current, which saves a read); a conflict re-reads."""
        written: dict[str, Any] = {}

        def recorded(job: dict[str, Any]) -> Optional[dict[str, Any]]:
            fields = change(job)
            written.clear()
            written.update(fields or {})
            return fields

        job = None
        if known is not None:
            job = {"metadata": dict(known["metadata"]), "status": dict(known.get("status") or {})}
        job = kube().update_rlhfjob_status(namespace, name, recorded, known=job)
        note(namespace, name, None if job is None else {**(job.get("status") or {}), **written})
        return job

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @retry_api_outages
    def launch(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
               namespace: str, name: str, uid: str, logger: kopf.Logger, **_: Any) -> None:
        current = dict(status)
        generation = meta.get("generation")
        note(namespace, name, current)
        if current.get("phase") in TERMINAL_PHASES:
            return  # never relaunch a finished job, even if its RayJob is gone

        def set_validated(ok: bool, reason: str, message: str, phase: Optional[str] = None):
            def change(job: dict[str, Any]) -> dict[str, Any]:
                fresh = job.get("status") or {}
                fields: dict[str, Any] = {
                    "conditions": st.set_condition(list(fresh.get("conditions") or []), st.VALIDATED, ok, reason,
                                                   message, generation),
                    "observedGeneration": generation,
                }
                if phase is not None and fresh.get("phase") in (None, Phase.Pending.value):
                    fields.update(phase=phase, reason=reason, message=message)
                return fields
            write_status(namespace, name, change, body)

        def fail(reason: str, message: str) -> None:
            metrics.validation_failures += 1
            set_validated(False, reason, message, Phase.Failed.value)
            post(body, [("Warning", reason, message)])

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
            if current.get("reason") != st.CODE_NOT_FOUND:
                post(body, [("Warning", st.CODE_NOT_FOUND, message)])
            set_validated(False, st.CODE_NOT_FOUND, message, Phase.Pending.value)
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
        code_hash = (rayjob["metadata"].get("annotations") or {}).get(CODE_HASH_ANNOTATION)
        suspended = bool(rayjob["spec"].get("suspend"))

        def launched(fresh_job: dict[str, Any]) -> dict[str, Any]:
            fresh = fresh_job.get("status") or {}
            fields: dict[str, Any] = {
                "rayJobName": rayjob["metadata"]["name"], "observedGeneration": generation,
                "conditions": st.set_condition(list(fresh.get("conditions") or []), st.VALIDATED, True, "Valid",
                                               "spec is valid and the Ray job is launched", generation),
            }
            if code_hash:
                fields["codeHash"] = code_hash
            # Only a job that has not moved on yet gets its first phase; the RayJob mirror owns it after.
            if not fresh.get("phase") or fresh.get("reason") == st.CODE_NOT_FOUND:
                if suspended:
                    reason = "Suspended" if job.spec.suspend else "WaitingForAdmission"
                    fields.update(phase=Phase.Suspended.value, reason=reason, message="RayJob created suspended")
                else:
                    fields.update(phase=Phase.Pending.value, reason=st.RAYJOB_CREATED, message="RayJob created")
            return {k: v for k, v in fields.items() if fresh.get(k) != v}

        if f"RayJob {rayjob['metadata']['name']}" in created and not current.get("rayJobName"):
            # This call created the RayJob, and the mirror holds its writes until rayJobName is
            # recorded (see mirror_rayjob): nothing else writes this status now, so kopf's own
            # status patch after this handler carries these fields (one write instead of two).
            fields = launched({"status": current})
            patch.setdefault("status", {}).update(fields)
            note(namespace, name, {**current, **fields})
        else:
            # Adopted after a restart: the mirror may be writing too, so guard the write.
            write_status(namespace, name, launched, body)
        if any(c.startswith("RayJob ") for c in created):
            metrics.rayjobs_created += 1
            post(body, [("Normal", st.RAYJOB_CREATED, f"created {', '.join(created)}")])
            logger.info("created %s", ", ".join(created))

    # ------------------------------------------------------------------ spec edits

    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    @retry_api_outages
    def spec_changed(body: kopf.Body, old: Optional[dict], new: Optional[dict], meta: kopf.Meta, status: kopf.Status,
                     namespace: str, name: str, **_: Any) -> None:
        generation = meta.get("generation")
        try:
            new_spec = parse_spec(new or {})
        except InvalidJob as exc:
            message = f"the edited spec is invalid and was not applied: {exc}"
            post(body, [("Warning", st.VALIDATION_FAILED, message)])
            write_status(namespace, name, lambda job: {"conditions": st.set_condition(
                list((job.get("status") or {}).get("conditions") or []), st.VALIDATED, False, st.VALIDATION_FAILED,
                message, generation)}, body)
            return
        try:
            old_spec = parse_spec(old or {})
        except InvalidJob:
            return  # the job never launched (launch reported why); nothing to carry over to a RayJob
        frozen = immutable_changes(old_spec, new_spec)
        if frozen:
            message = f"{', '.join(frozen)} cannot change on an existing job and was not applied; create a new RLHFJob"
            post(body, [("Warning", st.SPEC_IMMUTABLE, message)])
            verdict = (False, st.SPEC_IMMUTABLE, message)
        else:
            verdict = (True, "Valid", "spec is valid")

        rayjob_patch: dict[str, Any] = {}
        for attr in MUTABLE_FIELDS:
            python_name = snake_case(attr)
            if getattr(old_spec, python_name) != getattr(new_spec, python_name):
                rayjob_patch[attr] = getattr(new_spec, python_name)
        if rayjob_patch and status.get("rayJobName"):
            kube().patch_rayjob(namespace, status["rayJobName"], {"spec": rayjob_patch})
            if "suspend" in rayjob_patch:
                verb = "Suspending" if new_spec.suspend else "Resuming"
                post(body, [("Normal", verb, f"{verb.lower()} RayJob {status['rayJobName']}")])

        def change(job: dict[str, Any]) -> dict[str, Any]:
            conditions = list((job.get("status") or {}).get("conditions") or [])
            validated = st.get_condition(conditions, st.VALIDATED)
            if frozen or (validated is not None and validated.get("status") == "False"
                          and validated.get("reason") in (st.SPEC_IMMUTABLE, st.VALIDATION_FAILED)):
                conditions = st.set_condition(conditions, st.VALIDATED, *verdict, generation)
            return {"conditions": conditions, "observedGeneration": generation}
        write_status(namespace, name, change, body)

    # ------------------------------------------------------------------ RayJob → status

    def reported(body: kopf.Body, type: Optional[str], **_: Any) -> bool:
        # Until KubeRay reports, there is nothing to mirror (launch already set Pending);
        # filtering here keeps those events off the handler threads.
        return type == "DELETED" or bool((body.get("status") or {}).get("jobDeploymentStatus"))

    def mirror_rayjob(namespace: str, owner: str, rayjob: dict[str, Any], deleted: bool = False) -> None:
        events: list[tuple[str, str, str]] = []
        # launch records rayJobName with kopf's status patch, which lands just after it created
        # the RayJob; a state reported in between waits for it, so the two writes never race.
        wait_until = time.monotonic() + LAUNCH_RECORD_WAIT
        waiting = False

        def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
            nonlocal waiting
            events.clear()
            current = job.get("status") or {}
            generation = job["metadata"].get("generation")
            waiting = not current.get("rayJobName") and time.monotonic() < wait_until
            if waiting:
                return None
            if deleted:
                if current.get("phase") in TERMINAL_PHASES or job["metadata"].get("deletionTimestamp"):
                    return None  # finished, or the job itself is going away (foreground deletion)
                message = f"RayJob {rayjob['metadata']['name']} was deleted while the job was {current.get('phase')}"
                events.append(("Warning", st.RAYJOB_MISSING, message))
                conditions = st.phase_conditions(list(current.get("conditions") or []),
                                                 st.Verdict(Phase.Failed.value, st.RAYJOB_MISSING, message), generation)
                return {"phase": Phase.Failed.value, "reason": st.RAYJOB_MISSING, "message": message,
                        "conditions": conditions, "completionTime": st.now_rfc3339()}
            outcome = st.mirror(current, rayjob, generation)
            events.extend(outcome.events)
            return outcome.status or None

        job = write_status(namespace, owner, change)
        while waiting and job is not None:
            time.sleep(0.05)
            job = write_status(namespace, owner, change)
        if job is not None and events:
            post(job, events)

    @kopf.on.event("ray.io", "v1", "rayjobs", labels=MANAGED_BY, when=reported, registry=registry)
    def rayjob_changed(body: kopf.Body, type: Optional[str], namespace: str, **_: Any) -> None:
        owner = _owner_name(body)
        if owner is not None:
            mirror_rayjob(namespace, owner, dict(body), deleted=type == "DELETED")

    # ------------------------------------------------------------------ progress and resync
    #
    # One background loop instead of a kopf timer per job: kopf timers put a finalizer on
    # every object they serve, and the operator must hold none.

    def poll_progress(namespace: str, name: str, current: dict[str, Any]) -> None:
        # KubeRay names the cluster {rayjob}-{5 random} and its Service {cluster}-head-svc; before
        # the cluster name is known, the RayJob's own head Service ({rayjob}-head-svc) is tried.
        url = cfg.progress_url.format(cluster=current.get("rayClusterName") or current.get("rayJobName") or name,
                                      namespace=namespace, port=PROGRESS_PORT, job=name)
        metrics.progress_polls += 1
        report: Optional[ProgressReport] = None
        try:
            with urllib.request.urlopen(url, timeout=cfg.progress_timeout) as response:
                report = ProgressReport.from_json(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            metrics.progress_failures += 1
            log.debug("progress endpoint %s unreachable: %s", url, exc)
        events: list[tuple[str, str, str]] = []

        def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
            events.clear()
            fresh = job.get("status") or {}
            if fresh.get("phase") != Phase.Running.value:
                return None
            fields: dict[str, Any] = {}
            known = fresh.get("progress") or {}
            heartbeat = known.get("heartbeat")
            if report is not None:
                progress = {k: v for k, v in {
                    "step": report.step, "totalSteps": report.total_steps, "episode": report.episode,
                    "rewardMean": report.reward_mean, "scoreMean": report.score_mean, "kl": report.kl,
                    "samplesPerSecond": report.samples_per_second, "lastWeightSync": report.last_weight_sync,
                    "heartbeat": report.heartbeat or None,
                }.items() if v is not None}
                if progress != known:
                    fields["progress"] = progress
                heartbeat = report.heartbeat or heartbeat
                if report.last_checkpoint and fresh.get("lastCheckpoint") != report.last_checkpoint.path:
                    fields["lastCheckpoint"] = report.last_checkpoint.path
                    events.append(("Normal", "Checkpointed",
                                   f"step {report.last_checkpoint.step} saved to {report.last_checkpoint.path}"))
            # A heartbeat from before this attempt started running says nothing about this attempt.
            running_cond = st.get_condition(fresh.get("conditions") or [], st.RUNNING)
            since = running_cond.get("lastTransitionTime") if running_cond else None
            beat_time, since_time = st.parse_time(heartbeat), st.parse_time(since)
            if since_time and (beat_time is None or beat_time < since_time):
                heartbeat = since
            stall = st.stall_update(fresh, heartbeat, cfg.stall_seconds, job["metadata"].get("generation"))
            if stall is not None:
                fields["conditions"], event = stall
                events.append(event)
            return fields or None

        job = write_status(namespace, name, change)
        if job is not None and events:
            post(job, events)

    def resync(namespace: str, name: str, current: dict[str, Any]) -> None:
        """Level-triggered safety net: re-mirror the RayJob in case an event was missed or its write failed."""
        if not current.get("rayJobName"):
            return
        rayjob = kube().rayjob(namespace, current["rayJobName"])
        if rayjob is not None and reported(rayjob, "MODIFIED"):
            mirror_rayjob(namespace, name, rayjob)
        elif rayjob is None and kube().rlhfjob(namespace, name) is None:
            note(namespace, name, None)  # deleted with its children: stop tracking it

    async def background() -> None:
        limit = asyncio.Semaphore(8)
        last_resync = time.monotonic()

        async def guarded(fn, *args) -> None:
            async with limit:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, fn, *args)
                except Exception:  # one job's trouble must not stop the loop
                    log.exception("background %s of %s/%s failed", fn.__name__, args[0], args[1])

        while True:
            await asyncio.sleep(cfg.progress_interval)
            tasks = [guarded(poll_progress, ns, name, status) for (ns, name), status in list(active.items())
                     if status.get("phase") == Phase.Running.value]
            if time.monotonic() - last_resync >= cfg.resync_interval:
                last_resync = time.monotonic()
                tasks += [guarded(resync, ns, name, status) for (ns, name), status in list(active.items())]
            await asyncio.gather(*tasks)

    @kopf.on.startup(registry=registry)
    async def start_background(**_: Any) -> None:
        state["background"] = asyncio.create_task(background())

    @kopf.on.cleanup(registry=registry)
    async def stop_background(**_: Any) -> None:
        task = state.pop("background", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ admission

    if not cfg.webhook_cert_dir:
        return metrics  # kopf refuses admission handlers without a server to serve them

    @kopf.on.validate(GROUP, VERSION, PLURAL, id="validate-rlhfjob", registry=registry)
    def validate(body: kopf.Body, old: Optional[dict], operation: Optional[str], **_: Any) -> None:
        if operation == "UPDATE" and old and old.get("spec") == body.get("spec"):
            return  # status and metadata-only writes are not ours to judge
        try:
            new_job = parse_job(dict(body))
        except InvalidJob as exc:
            raise kopf.AdmissionError("; ".join(str(e) for e in exc.errors), code=422)
        if operation == "UPDATE" and old and old.get("spec"):
            try:
                old_spec = parse_spec(old["spec"])
            except InvalidJob:
                return
            frozen = immutable_changes(old_spec, new_job.spec)
            if frozen:
                raise kopf.AdmissionError(f"{', '.join(frozen)} cannot change on an existing RLHFJob; create a new one",
                                          code=422)

    return metrics
