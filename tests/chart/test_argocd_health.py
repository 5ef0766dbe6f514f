"""The Argo CD health check for RLHFJob (docs/argocd-health.lua), run in a real Lua interpreter.

Argo CD runs health scripts in gopher-lua (Lua 5.1) with the live object as the global `obj`;
the script returns a table {status=..., message=...}. Both Lua 5.1 and the newest Lua run it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

lupa = pytest.importorskip("lupa")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "argocd-health.lua"
GITOPS_DOC = ROOT / "docs" / "gitops.md"
LUA_VERSIONS = [v for v in ("lua51", "lua54") if hasattr(__import__(f"lupa.{v}"), v)]


def health(obj: dict[str, Any], version: str = "lua51") -> dict[str, Any]:
    module = getattr(__import__(f"lupa.{version}"), version)
    lua = module.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    return dict(result.items())


def job(phase: Optional[str] = None, conditions: Optional[list[dict[str, str]]] = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
                            "metadata": {"name": "math", "namespace": "team-a"}, "spec": {"model": {"path": "/m"}}}
    if phase is not None or conditions is not None or status:
        body["status"] = dict(status)
        if phase is not None:
            body["status"]["phase"] = phase
        if conditions is not None:
            body["status"]["conditions"] = conditions
    return body


def cond(ctype: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("version", LUA_VERSIONS)
@pytest.mark.parametrize("phase, expected", [
    ("Succeeded", "Healthy"),
    ("Failed", "Degraded"),
    ("Suspended", "Suspended"),
    ("Pending", "Progressing"),
    ("Provisioning", "Progressing"),
    ("Running", "Progressing"),
    ("Retrying", "Progressing"),
])
def test_each_phase_maps_to_a_health_status(phase, expected, version):
    result = health(job(phase, [cond("Validated", "True", "Valid", "spec is valid")]), version)
    assert result["status"] == expected
    assert isinstance(result["message"], str) and result["message"]


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_no_status_yet_is_progressing(version):
    assert health(job(), version)["status"] == "Progressing"
    assert health(job(conditions=[]), version)["status"] == "Progressing"  # status without a phase
    assert health(job(phase=""), version)["status"] == "Progressing"


def test_failed_carries_reason_and_message():
    result = health(job("Failed", [cond("Failed", "True", "RayJobFailed", "trainer OOM")],
                        reason="RayJobFailed", message="trainer 3 was OOM-killed"))
    assert result == {"status": "Degraded", "message": "RayJobFailed: trainer 3 was OOM-killed"}
    assert health(job("Failed"))["message"] == "Job failed"


def test_running_but_stalled_is_degraded():
    stalled = cond("Stalled", "True", "NoHeartbeat", "no progress heartbeat for 900s")
    result = health(job("Running", [cond("Validated", "True"), stalled], message="step 12/100"))
    assert result["status"] == "Degraded"
    assert "stalled" in result["message"].lower() and "900s" in result["message"]
    assert health(job("Running", [cond("Stalled", "True", "NoHeartbeat")]))["message"] == "Job is stalled: NoHeartbeat"


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_running_with_stalled_false_or_unknown_is_progressing(status):
    result = health(job("Running", [cond("Stalled", status, "Heartbeat", "ok")], message="step 12/100"))
    assert result == {"status": "Progressing", "message": "step 12/100"}


def test_stalled_condition_only_degrades_a_running_job():
    stalled = [cond("Stalled", "True", "NoHeartbeat")]
    assert health(job("Succeeded", stalled))["status"] == "Healthy"
    assert health(job("Suspended", stalled))["status"] == "Suspended"


def test_unknown_phase_is_reported_not_guessed():
    assert health(job("Exploded"))["status"] == "Unknown"


def test_chart_ships_the_same_script():
    shipped = ROOT / "charts" / "rlhf-operator" / "files" / "argocd-health.lua"
    assert shipped.read_bytes() == SCRIPT.read_bytes()


def test_gitops_doc_embeds_the_script_verbatim_in_an_argocd_cm_snippet():
    text = GITOPS_DOC.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    cms = [yaml.safe_load(b) for b in blocks if "resource.customizations.health.rlhf.dev_RLHFJob" in b]
    assert cms, "docs/gitops.md needs an argocd-cm example"
    cm = cms[0]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"]["resource.customizations.health.rlhf.dev_RLHFJob"] == SCRIPT.read_text()
