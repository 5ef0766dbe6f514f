"""Launch and spec edits: the RLHFJob's own change handlers.

    launch        RLHFJob created (or operator resumed): validate, snapshot code, create children
    spec_changed  RLHFJob spec edited: pass suspend/deadlines to the RayJob, refuse immutable edits

Both are idempotent: a resumed operator runs ``launch`` again for every job it finds, and it
adopts what an earlier run created instead of creating it twice.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import kopf
from kubernetes.client.rest import ApiException
from rlhf_api.base import snake_case
from rlhf_api.contract import check_agent_source, check_reward_source
from rlhf_api.imports import job_import_findings
from rlhf_api.jobstatus import TERMINAL_PHASES, Phase
from rlhf_api.names import CODE_HASH_ANNOTATION, GROUP, KIND, VERSION
from rlhf_api.spec import MUTABLE_FIELDS, RLHFJob, immutable_changes
from rlhf_api.advice import job_warnings
from rlhf_api.secrets import describe, secret_references, token_references
from rlhf_api.validation import FieldError, InvalidJob, parse_job, parse_spec
from rlhf_api.workerconfig import REWARD_FILE

from . import status as st
from . import codecheck
from .codecheck import CodeCheckFailed, check_before_rayjob
from .config import OperatorConfig
from .context import OperatorContext
from .kube import Kube, NotOwned, Refused, answer_of, is_transient
from .preflight import preflight
from .render import code_refs, render, snapshot_configmap_name
from .writes import note, post, write_status

log = logging.getLogger(__name__)

def retry_delay(retry: int, base: float, cap: float) -> float:
    """Backoff for the ``retry``-th retry (0 first): base, 2·base, 4·base, ... at most ``cap``."""
    return min(cap, base * 2 ** min(max(retry, 0), 30))


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        answer = answer_of(exc)
        return f"{answer.code} {answer.reason}: {answer.message}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


def _report_degraded(memo: OperatorContext, body: kopf.Body, exc: BaseException, failing_for: float,
                     retry_in: float) -> None:
    """Set Degraded=True (and a first phase, Pending, on a job that has none) and post one Event
    when it turns True. Best effort: the API server is failing already, and retrying goes on."""
    meta = body["metadata"]
    generation, error = meta.get("generation"), _error_text(exc)
    turned: list[str] = []

    def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
        fresh = job.get("status") or {}
        turned.clear()
        if fresh.get("phase") in TERMINAL_PHASES:
            return None
        before = st.get_condition(fresh.get("conditions") or [], st.DEGRADED)
        conditions = st.api_degraded(list(fresh.get("conditions") or []), error, failing_for, retry_in, generation)
        fields: dict[str, Any] = {"conditions": conditions}
        if not fresh.get("phase"):
            fields.update(phase=Phase.Pending.value, reason=st.TRANSIENT_API_ERRORS,
                          message=st.get_condition(conditions, st.DEGRADED)["message"])
        if before is None or before.get("status") != "True":
            turned.append(st.get_condition(conditions, st.DEGRADED)["message"])
        return fields
    try:
        write_status(memo, meta["namespace"], meta["name"], change, body)
        if turned:
            post(memo, body, [("Warning", st.TRANSIENT_API_ERRORS, turned[0])])
    except Exception as err:  # noqa: BLE001 -- the report is secondary; the retry is what matters
        log.warning("could not report API errors on %s/%s: %s", meta["namespace"], meta["name"], err)


def retry_api_outages(handler):
    """Retry a handler with backoff when the API server failed transiently (kube.is_transient):
    soon at first instead of after kopf's default minute, then less and less often; nothing was
    lost, the handler is idempotent. Failing for longer than ``api_degraded_seconds`` sets the
    job's Degraded condition, so the retrying is never silent; the handler's next success clears it."""
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            memo, runtime = kwargs.get("memo"), kwargs.get("runtime")
            cfg = memo.cfg if memo is not None else OperatorConfig()  # a memo-less call: the defaults
            delay = retry_delay(int(kwargs.get("retry") or 0), cfg.api_retry_seconds, cfg.api_retry_max_seconds)
            if memo is not None and runtime is not None and runtime.total_seconds() >= cfg.api_degraded_seconds:
                _report_degraded(memo, kwargs["body"], exc, runtime.total_seconds(), delay)
            raise kopf.TemporaryError(f"Kubernetes API unavailable: {exc}", delay=delay) from exc
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
        try:
            data = kube.configmap_data(namespace, ref.config_map)
        except ApiException as exc:
            if exc.status != 403:
                raise
            # The operator's RBAC, not the job, is at fault: say so, and look again later.
            raise CodeUnavailable(f"{ref.field}: the operator may not read ConfigMap {ref.config_map!r} in namespace"
                                  f" {namespace!r} ({_error_text(exc)}); grant it `get` on configmaps there (the"
                                  " chart's watchNamespaces)") from None
        if data is None:
            raise CodeUnavailable(f"{ref.field}: ConfigMap {ref.config_map!r} not found in namespace {namespace!r};"
                                  f" create it (kubectl create configmap {ref.config_map} --from-file={ref.key})")
        if ref.key not in data:
            raise CodeUnavailable(f"{ref.field}: ConfigMap {ref.config_map!r} has no key {ref.key!r}"
                                  f" (it has: {', '.join(sorted(data)) or 'nothing'}); set configMapRef.key")
        sources[ref.file] = data[ref.key]
    return sources


def _check_code(sources: dict[str, str], job: RLHFJob, launched: bool = False) -> list[str]:
    """The same checks as for inline code, on code that came from ConfigMaps; then every import of
    the code, resolved against the worker image's module list (parsed, never imported). Returns
    the warnings (imports a custom cluster.image must provide); raises InvalidJob for the rest."""
    for ref in code_refs(job.spec):
        what = f"ConfigMap {ref.config_map!r} key {ref.key!r}"
        try:
            (check_reward_source if ref.file == REWARD_FILE else check_agent_source)(sources[ref.file], what)
        except ValueError as exc:
            raise InvalidJob([FieldError(ref.field, str(exc))]) from None
    unresolved, doubtful = job_import_findings(job.spec, sources)
    if unresolved and not launched:  # a running job's code was accepted; a newer module list does not undo that
        raise InvalidJob([FieldError("", message) for message in unresolved])
    return doubtful


SECRETS_NOT_ALLOWED = "SecretsNotAllowed"


def _secrets_not_allowed(memo: OperatorContext, job: RLHFJob) -> Optional[str]:
    """Why the job may not use the Secrets it names, or None. With the admission webhook, admission
    checked that its creator may read each one; without it nobody did, so only an operator
    configured with allow_secret_references (RLHF_ALLOW_SECRET_REFERENCES) accepts them."""
    if memo.cfg.webhook_cert_dir or memo.cfg.allow_secret_references:
        return None
    refs, tokens = secret_references(job.spec), token_references(job.spec)
    if not refs and not tokens:
        return None
    named = ", ".join(([describe(refs)] if refs else [])
                      + [f'the API token of ServiceAccount "{t.service_account}" ({t.field})' for t in tokens])
    return (f"{named}: this operator runs without its admission webhook, so nothing checked that the job's"
            " creator may read these Secrets; enable the webhook (Helm value webhook.enabled), or, where everyone"
            " who may create RLHFJobs may read the namespace's Secrets, set secrets.allowReferences"
            " (RLHF_ALLOW_SECRET_REFERENCES=true); or remove the references")


def _set_validated(memo: OperatorContext, body: kopf.Body, ok: bool, reason: str, message: str,
                   phase: Optional[str] = None) -> None:
    """Write the Validated condition; ``phase`` too, while the job has none yet or is Pending."""
    meta = body["metadata"]
    generation = meta.get("generation")

    def change(job: dict[str, Any]) -> dict[str, Any]:
        fresh = job.get("status") or {}
        fields: dict[str, Any] = {
            "conditions": st.set_condition(list(fresh.get("conditions") or []), st.VALIDATED, ok, reason,
                                           message, generation),
            "observedGeneration": generation,
        }
        if phase is not None and fresh.get("phase") in (None, Phase.Pending.value):
            fields.update(phase=phase, reason=reason, message=message)
            if phase == Phase.Failed.value:  # a Failed phase has its Failed condition
                fields["conditions"] = st.phase_conditions(fields["conditions"], st.Verdict(phase, reason, message),
                                                           generation)
        return fields
    write_status(memo, meta["namespace"], meta["name"], change, body)


def _fail(memo: OperatorContext, body: kopf.Body, reason: str, message: str) -> None:
    memo.metrics.validation_failures_total.inc()
    _set_validated(memo, body, False, reason, message, Phase.Failed.value)
    post(memo, body, [("Warning", reason, message)])


def _remove(memo: OperatorContext, owned: list[dict[str, Any]], namespace: str, name: str) -> None:
    """Delete the children a launch that cannot finish created or adopted: the job, Failed, will
    never use them. All are owned by the job, so garbage collection takes what a failed delete leaves."""
    for obj in owned:
        try:
            memo.kube.delete(obj)
        except Exception as err:  # noqa: BLE001 -- owned: the job's deletion collects it
            log.warning("could not delete %s %s of failed RLHFJob %s/%s: %s", obj["kind"],
                        obj["metadata"]["name"], namespace, name, err)


def _refused(memo: OperatorContext, body: kopf.Body, exc: Refused, owned: list[dict[str, Any]]) -> None:
    """End the job: the API server refused a child for good (status.refusal says why and how
    to fix it); what this attempt created or adopted is removed."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    verdict = st.refusal(exc.answer, exc.kind, exc.api_version, exc.name, exc.namespace)
    memo.metrics.children_refused_total.inc()
    _remove(memo, owned, namespace, name)

    def change(job: dict[str, Any]) -> Optional[dict[str, Any]]:
        fresh = job.get("status") or {}
        if fresh.get("phase") in TERMINAL_PHASES:
            return None
        return st.refused_status(fresh, verdict, generation)
    write_status(memo, namespace, name, change, body)
    post(memo, body, [("Warning", verdict.reason, verdict.message)])


def _launched(fresh_job: dict[str, Any], *, rayjob: dict[str, Any], job: RLHFJob,
              generation: Optional[int]) -> dict[str, Any]:
    """The status fields that record a launched RayJob, as a change to ``fresh_job``."""
    fresh = fresh_job.get("status") or {}
    code_hash = (rayjob["metadata"].get("annotations") or {}).get(CODE_HASH_ANNOTATION)
    fields: dict[str, Any] = {
        "rayJobName": rayjob["metadata"]["name"], "observedGeneration": generation,
        "conditions": st.api_recovered(st.set_condition(list(fresh.get("conditions") or []), st.VALIDATED, True,
                                                        "Valid", "spec is valid and the Ray job is launched",
                                                        generation), generation),
    }
    if code_hash:
        fields["codeHash"] = code_hash
    # Only a job that has not moved on yet gets its first phase; the RayJob mirror owns it after.
    if not fresh.get("phase") or fresh.get("reason") in st.PRE_LAUNCH_REASONS:
        if rayjob["spec"].get("suspend"):
            reason = "Suspended" if job.spec.suspend else "WaitingForAdmission"
            fields.update(phase=Phase.Suspended.value, reason=reason, message="RayJob created suspended")
        else:
            fields.update(phase=Phase.Pending.value, reason=st.RAYJOB_CREATED, message="RayJob created")
    return {k: v for k, v in fields.items() if fresh.get(k) != v}


@retry_api_outages
def launch(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, namespace: str, name: str,
           uid: str, logger: kopf.Logger, memo: OperatorContext, **_: Any) -> None:
    current = dict(status)
    generation = meta.get("generation")
    note(memo, namespace, name, current)
    if current.get("phase") in TERMINAL_PHASES:
        return  # never relaunch a finished job, even if its RayJob is gone
    try:
        job = parse_job({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                         "metadata": {"name": name, "namespace": namespace, "uid": uid,
                                      "labels": dict(meta.get("labels") or {}), "generation": generation,
                                      "annotations": dict(meta.get("annotations") or {})},
                         "spec": dict(body.get("spec") or {})})
        refused = _secrets_not_allowed(memo, job)
        if refused:
            _fail(memo, body, SECRETS_NOT_ALLOWED, refused)
            raise kopf.PermanentError(refused)
        sources = _read_code(memo.kube, job, current)
        doubtful = _check_code(sources, job, launched=bool(current.get("rayJobName")))
    except InvalidJob as exc:
        _fail(memo, body, st.VALIDATION_FAILED, "; ".join(str(e) for e in exc.errors))
        raise kopf.PermanentError(f"invalid RLHFJob: {exc}")
    except CodeUnavailable as exc:
        message = f"{exc}; retrying every {int(memo.cfg.code_retry_seconds)} s"
        if current.get("reason") != st.CODE_NOT_FOUND:
            post(memo, body, [("Warning", st.CODE_NOT_FOUND, message)])
        _set_validated(memo, body, False, st.CODE_NOT_FOUND, message, Phase.Pending.value)
        raise kopf.TemporaryError(str(exc), delay=memo.cfg.code_retry_seconds)

    objects = render(job, sources, memo.options)
    problems = preflight(objects)
    if problems:  # what the API server or KubeRay would refuse: create nothing, and say so
        too_large = any("Too long" in p for p in problems)
        _fail(memo, body, st.CHILD_TOO_LARGE if too_large else st.CHILD_INVALID,
              "; ".join(problems) + "; nothing was created")
        raise kopf.PermanentError(f"rendered objects would be refused: {problems[0]}")
    created: list[str] = []
    owned: list[dict[str, Any]] = []  # created or adopted by this attempt
    try:
        for obj in objects:
            if obj is objects[-1]:  # the RayJob: only once the code passed its check in a CPU-only pod
                digest = (objects[0]["metadata"].get("annotations") or {}).get(CODE_HASH_ANNOTATION)
                current = check_before_rayjob(memo, body, job, objects[0], digest, current) or current
            if memo.kube.create_or_adopt(obj, uid):
                created.append(f"{obj['kind']} {obj['metadata']['name']}")
            owned.append(obj)
    except CodeCheckFailed as exc:
        _remove(memo, owned, namespace, name)
        raise kopf.PermanentError(codecheck.fail(memo, body, str(exc))) from None
    except NotOwned as exc:
        _remove(memo, owned, namespace, name)
        _fail(memo, body, st.CHILD_CONFLICT, str(exc))
        raise kopf.PermanentError(str(exc))
    except Refused as exc:
        _refused(memo, body, exc, owned)
        raise kopf.PermanentError(f"the API server refused {exc}") from None

    rayjob = objects[-1]
    launched = functools.partial(_launched, rayjob=rayjob, job=job, generation=generation)
    if f"RayJob {rayjob['metadata']['name']}" in created and not current.get("rayJobName"):
        # This call created the RayJob, and the mirror holds its writes until rayJobName is
        # recorded (see mirror.mirror_rayjob): nothing else writes this status now, so kopf's own
        # status patch after this handler carries these fields (one write instead of two).
        fields = launched({"status": current})
        patch.setdefault("status", {}).update(fields)
        note(memo, namespace, name, {**current, **fields})
    else:
        # Adopted after a restart: the mirror may be writing too, so guard the write.
        write_status(memo, namespace, name, launched, body)
    if any(c.startswith("RayJob ") for c in created):
        memo.metrics.rayjobs_created_total.inc()
        # Warnings of a valid spec (rlhf_api.advice) go out once, with the RayJob they concern.
        post(memo, body, [("Normal", st.RAYJOB_CREATED, f"created {', '.join(created)}")]
             + [("Warning", w.reason, str(w)) for w in job_warnings(job.spec)])
        logger.info("created %s", ", ".join(created))
        if doubtful:  # imports a custom cluster.image must provide (rlhf_api.imports)
            post(memo, body, [("Warning", "UnresolvedImports", line) for line in doubtful])


@retry_api_outages
def spec_changed(body: kopf.Body, old: Optional[dict], new: Optional[dict], meta: kopf.Meta, status: kopf.Status,
                 namespace: str, name: str, memo: OperatorContext, **_: Any) -> None:
    generation = meta.get("generation")
    try:
        new_spec = parse_spec(new or {})
    except InvalidJob as exc:
        message = f"the edited spec is invalid and was not applied: {exc}"
        post(memo, body, [("Warning", st.VALIDATION_FAILED, message)])
        write_status(memo, namespace, name, lambda job: {"conditions": st.set_condition(
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
        post(memo, body, [("Warning", st.SPEC_IMMUTABLE, message)])
        verdict = (False, st.SPEC_IMMUTABLE, message)
    else:
        verdict = (True, "Valid", "spec is valid")

    rayjob_patch: dict[str, Any] = {}
    for attr in MUTABLE_FIELDS:
        python_name = snake_case(attr)
        if getattr(old_spec, python_name) != getattr(new_spec, python_name):
            rayjob_patch[attr] = getattr(new_spec, python_name)
    if rayjob_patch and status.get("rayJobName"):
        memo.kube.patch_rayjob(namespace, status["rayJobName"], {"spec": rayjob_patch})
        if "suspend" in rayjob_patch:
            verb = "Suspending" if new_spec.suspend else "Resuming"
            post(memo, body, [("Normal", verb, f"{verb.lower()} RayJob {status['rayJobName']}")])

    def change(job: dict[str, Any]) -> dict[str, Any]:
        conditions = list((job.get("status") or {}).get("conditions") or [])
        validated = st.get_condition(conditions, st.VALIDATED)
        if frozen or (validated is not None and validated.get("status") == "False"
                      and validated.get("reason") in (st.SPEC_IMMUTABLE, st.VALIDATION_FAILED)):
            conditions = st.set_condition(conditions, st.VALIDATED, *verdict, generation)
        return {"conditions": st.api_recovered(conditions, generation), "observedGeneration": generation}
    write_status(memo, namespace, name, change, body)
