"""docs/operations.md explains every reason the operator may write into a job's status."""

import re
from pathlib import Path

from rlhf_api import jobstatus

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "rlhf_operator"
# KubeRay 1.7's RayJob failure reasons, which the operator passes on (shared/kuberay-crds/REPORT.md).
KUBERAY_REASONS = {"SubmissionFailed", "DeadlineExceeded", "PreRunningDeadlineExceeded", "AppFailed",
                   "JobDeploymentStatusTransitionGracePeriodExceeded", "JobStatusCheckTimeoutExceeded",
                   "ValidationFailed"}


def _reasons_the_operator_writes() -> set[str]:
    found = set(KUBERAY_REASONS)
    condition_types = {jobstatus.VALIDATED, jobstatus.RUNNING, jobstatus.SUSPENDED, jobstatus.SUCCEEDED,
                       jobstatus.FAILED, jobstatus.STALLED, jobstatus.DEGRADED}
    for name, value in vars(jobstatus).items():
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[A-Z][A-Za-z]+", value):
            found.add(value)
    found -= condition_types
    for path in OPERATOR.glob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'Verdict\(Phase\.\w+\.value, "(\w+)"', text))
        found |= set(re.findall(r'set_condition\([^)]*?, (?:True|False), "(\w+)"', text))
        found |= set(re.findall(r'^[A-Z_]+ = "([A-Z][A-Za-z]+)"$', text, re.M)) - {"Normal", "Warning"}
    return found


def test_every_status_reason_has_a_troubleshooting_row():
    table = (ROOT / "docs" / "operations.md").read_text().split("## Troubleshooting by reason", 1)[1]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    reasons = _reasons_the_operator_writes()
    assert {"Training", "Completed", "NoHeartbeat", "SecretsNotAllowed", "AppFailed"} <= reasons  # the scan works
    assert reasons - documented == set(), "add a row to docs/operations.md for each"
