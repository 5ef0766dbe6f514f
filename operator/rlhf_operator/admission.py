"""Admission: the validating webhook for RLHFJobs.

    validate  admission webhook: the same spec model, before anything is stored

It judges with the same spec model as launch and spec_changed (parse_job, immutable_changes),
so a spec it refuses would be refused there too. Code kept in ConfigMaps is checked by launch
alone, which reads it; without the webhook (no certificates configured) those handlers report
every error in the job's status instead.
"""

from __future__ import annotations

from typing import Any, Optional

import kopf
from rlhf_api.spec import immutable_changes
from rlhf_api.validation import InvalidJob, parse_job, parse_spec


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
