"""Admission: the validating webhook for RLHFJobs.

    validate  admission webhook: the same spec model, before anything is stored

It judges with the same spec model as launch and spec_changed (parse_job, immutable_changes),
so a spec it refuses would be refused there too; the imports of inline code are resolved against
the worker image's module list (rlhf_api.imports: refused on the default image, warned about on a
custom ``cluster.image``). Code kept in ConfigMaps is checked by launch
alone, which reads it; without the webhook (no certificates configured) those handlers report
every error in the job's status instead.

Every Secret the spec names (rlhf_api.secrets.secret_references) is checked with a
SubjectAccessReview for the requesting user (`get` on that Secret): pods run the user's code and
could print it, so naming a Secret must need the right to read it. A refusal names the Secret and
the field. A service-account token mounted into the pods (cluster.automountServiceAccountToken) is
a credential too: it needs `create` on that account's serviceaccounts/token. Without the webhook
there is no requesting user, and launch refuses such jobs unless the operator is configured to
allow them (OperatorConfig.allow_secret_references).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import kopf
import urllib3
from kubernetes.client.rest import ApiException
from rlhf_api.imports import job_import_findings
from rlhf_api.advice import job_warnings
from rlhf_api.secrets import SecretReference, TokenReference, secret_references, token_references
from rlhf_api.spec import immutable_changes
from rlhf_api.validation import InvalidJob, parse_job, parse_spec

from .kube import answer_of

if TYPE_CHECKING:
    from .context import OperatorContext


def validate(body: kopf.Body, old: Optional[dict], operation: Optional[str], memo: "OperatorContext",
             userinfo: Optional[dict] = None, warnings: Optional[list[str]] = None, **_: Any) -> None:
    if operation == "UPDATE" and old and old.get("spec") == body.get("spec"):
        return  # status and metadata-only writes are not ours to judge
    try:
        new_job = parse_job(dict(body))
    except InvalidJob as exc:
        raise kopf.AdmissionError("; ".join(str(e) for e in exc.errors), code=422)
    # Inline code's imports, parsed and never imported here (ConfigMap code: launch checks it).
    unresolved, doubtful = job_import_findings(new_job.spec)
    if unresolved:
        raise kopf.AdmissionError("; ".join(unresolved), code=422)
    if warnings is not None:
        warnings.extend(doubtful)  # a custom cluster.image: kubectl prints these as warnings
        warnings.extend(str(w) for w in job_warnings(new_job.spec))  # e.g. checkpoints that die with the pods
    old_spec = None
    if operation == "UPDATE" and old and old.get("spec"):
        try:
            old_spec = parse_spec(old["spec"])
        except InvalidJob:
            old_spec = None
    if old_spec is not None:
        frozen = immutable_changes(old_spec, new_job.spec)
        if frozen:
            raise kopf.AdmissionError(f"{', '.join(frozen)} cannot change on an existing RLHFJob; create a new one",
                                      code=422)
    # On UPDATE only Secrets the stored spec did not name yet: suspending someone else's job is
    # not reading their Secrets (and the fields that name Secrets are immutable anyway).
    known = {ref.name for ref in secret_references(old_spec)} if old_spec is not None else set()
    refs = [ref for ref in secret_references(new_job.spec) if ref.name not in known]
    namespace = new_job.metadata.namespace or body["metadata"].get("namespace")
    check_secrets(memo, dict(userinfo or {}), namespace, refs)
    tokens = token_references(new_job.spec)
    if old_spec is None or token_references(old_spec) != tokens:
        check_tokens(memo, dict(userinfo or {}), namespace, tokens)


def _review(field: str, ask, what: str, refused: str) -> None:
    """One SubjectAccessReview (``ask()`` -> (allowed, reason)); refuse the request when it says no
    or does not answer (no answer is no permission). ``what`` and ``refused`` word the message."""
    try:
        allowed, reason = ask()
    except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
        why = answer_of(exc).message if isinstance(exc, ApiException) else str(exc)
        raise kopf.AdmissionError(f"{field}: could not check whether {what} (SubjectAccessReview failed: {why});"
                                  " try again", code=500)
    if not allowed:
        # replace, not format: user and object names are the user's text
        raise kopf.AdmissionError(refused.replace("{reason}", f" ({reason})" if reason else "", 1), code=403)


def check_tokens(memo: "OperatorContext", user: dict[str, Any], namespace: Optional[str],
                 tokens: list[TokenReference]) -> None:
    """Refuse the request unless ``user`` may request the API token the pods would get mounted."""
    who = user.get("username") or "the requesting user"
    for ref in tokens:
        account = f'ServiceAccount "{ref.service_account}"'
        _review(ref.field, lambda: memo.kube.may_request_token(user, namespace or "", ref.service_account),
                f"{who} may request a token of {account}",
                f"{ref.field}: {who} may not request a token of {account} in namespace {namespace} (`create` on"
                " serviceaccounts/token), so a job of theirs may not mount one either{reason};"
                " set automountServiceAccountToken: false, or ask for that permission")


def check_secrets(memo: "OperatorContext", user: dict[str, Any], namespace: Optional[str],
                  refs: list[SecretReference]) -> None:
    """Refuse the request unless ``user`` may `get` every Secret in ``refs`` (one review each)."""
    who = user.get("username") or "the requesting user"
    for ref in refs:
        _review(ref.field, lambda: memo.kube.may_read_secret(user, namespace or "", ref.name),
                f'{who} may read Secret "{ref.name}"',
                f'{ref.field}: {who} may not read Secret "{ref.name}" in namespace {namespace}, so a job of theirs'
                " may not use it either{reason}; ask for `get` on it or use a Secret you can read")
