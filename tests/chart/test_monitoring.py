"""The chart's monitoring, rendered with Helm's own engine (helm-python-sdk): the Grafana dashboard
ConfigMap and the PrometheusRule, off by default; their PromQL names only metrics the operator
really exports (a scrape of the operator's own registry, parsed with Prometheus' parser); and the
logging and API settings the chart passes to the operator parse as OperatorConfig reads them."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")

from k8s_schemas import core_errors  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from rlhf_api.progress import ProgressReport  # noqa: E402
from rlhf_operator.config import OperatorConfig  # noqa: E402
from rlhf_operator.metrics import Metrics  # noqa: E402

helm.disable_logging()

CHART = Path(__file__).resolve().parents[2] / "charts" / "rlhf-operator"
RELEASE, NAMESPACE = "rlhf-operator", "rlhf-system"


@lru_cache(maxsize=1)
def chart() -> Any:
    return helm.Chart.load(str(CHART))

MONITORING = {"metrics": {"serviceMonitor": {"enabled": True},
                          "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "ML"}},
                          "prometheusRule": {"enabled": True, "labels": {"release": "prom"},
                                             "alertLabels": {"team": "ml-platform"}}},
              "logFormat": "json", "api": {"degradedSeconds": 45}}
ALERTS = {"RLHFJobStalled", "RLHFJobFailed", "RLHFJobRewardFaults", "RLHFOperatorDown"}
# PromQL words that are not metric names: functions are recognised by their "(".
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}
# Prometheus records `up` itself for every target it scrapes; the operator cannot export it.
PROMETHEUS_OWN = {"up"}


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in out.items() if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def container_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    [deployment] = [o for o in objs if o["kind"] == "Deployment"]
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: strings, label matchers, ranges and grouping
    clauses removed, then every identifier that is neither a function (followed by "(") nor a keyword."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end():].lstrip()
        if following.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def exported_names() -> set[str]:
    """Every sample name the operator's registry exposes once it has seen a job, a progress report,
    a handler run and an API error: scraped as Prometheus would, with its parser."""
    metrics = Metrics()
    metrics.note_job("team-a", "demo", {"phase": "Running", "conditions": [{"type": "Stalled", "status": "True"}],
                                        "rayJobName": "demo", "dashboardURL": "demo-head-svc.team-a.svc:8265"})
    metrics.note_report("team-a", "demo", ProgressReport(step=3, total_steps=9, reward_mean=0.5, score_mean=0.4,
                                                         kl=0.01, reward_error_rate=0.2, heartbeat="2026-01-01T00:00:00Z"))
    metrics.timed("launch", lambda **_: None)()
    metrics.api_error("POST", 500)
    families = text_string_to_metric_families(metrics.render().decode())
    return {sample.name for family in families for sample in family.samples}


def test_monitoring_is_off_by_default():
    objs = rendered({})
    assert not any(o["kind"] == "PrometheusRule" for o in objs)
    assert not any(o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {}) for o in objs)


def test_dashboard_configmap_carries_grafanas_label_and_a_dashboard_on_exported_metrics():
    [configmap] = [o for o in rendered(MONITORING) if o["kind"] == "ConfigMap"
                   and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "ML"}
    [text] = configmap["data"].values()
    dashboard = json.loads(text)
    assert dashboard["uid"] == "rlhf-operator" and dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "rlhfjob"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Grafana's label_values(SERIES, LABEL): the PromQL is the first argument.
    exprs += [re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"]).group(1)
              for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"rlhf_job_step", "rlhf_job_reward_mean", "rlhf_job_kl", "rlhf_job_heartbeat_age_seconds",
            "rlhf_job_info"} <= used
    assert used - PROMETHEUS_OWN <= exported_names(), used - PROMETHEUS_OWN - exported_names()


def test_prometheus_rule_alerts_on_metrics_the_operator_exports():
    [rule] = [o for o in rendered(MONITORING) if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == ALERTS
    exported = exported_names()
    for name, alert in alerts.items():
        used = metric_names(alert["expr"])
        assert used, name
        assert used - PROMETHEUS_OWN <= exported, (name, used - PROMETHEUS_OWN - exported)
        assert alert["labels"]["team"] == "ml-platform" and alert["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", alert.get("for", "0s")), name
        # Prometheus' templates survive Helm's: the summary still names the job.
        assert "{{" not in alert["annotations"]["summary"] or "$labels" in alert["annotations"]["summary"]
    assert metric_names(alerts["RLHFJobStalled"]["expr"]) == {"rlhf_job_stalled"}
    assert 'phase="Failed"' in alerts["RLHFJobFailed"]["expr"]
    assert metric_names(alerts["RLHFJobRewardFaults"]["expr"]) == {"rlhf_job_reward_faults",
                                                                    "rlhf_job_reward_error_rate"}
    # Down: no successful scrape of this release's metrics Service (job label = Service name).
    assert alerts["RLHFOperatorDown"]["expr"] == \
        f'absent(up{{job="{RELEASE}-metrics", namespace="{NAMESPACE}"}} == 1)'
    assert "$labels.rlhfjob" in alerts["RLHFJobStalled"]["annotations"]["summary"]
    # Scraped some other way (annotations, a scrape config): the job label is a value.
    values = {**MONITORING, "metrics": {**MONITORING["metrics"], "prometheusRule": {"enabled": True,
                                                                                    "operatorJob": "rlhf"}}}
    [other] = [o for o in rendered(values) if o["kind"] == "PrometheusRule"]
    down = [r for g in other["spec"]["groups"] for r in g["rules"] if r.get("alert") == "RLHFOperatorDown"]
    assert down[0]["expr"] == f'absent(up{{job="rlhf", namespace="{NAMESPACE}"}} == 1)'


def test_service_monitor_keeps_the_jobs_namespace_label():
    [monitor] = [o for o in rendered(MONITORING) if o["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_rules_need_the_metrics_service():
    with pytest.raises(helm.HelmError, match="metrics.enabled"):
        rendered({"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}})


def test_log_format_and_degraded_seconds_reach_the_operator():
    rendered_env = container_env(rendered(MONITORING))
    assert rendered_env["RLHF_LOG_FORMAT"] == "json" and rendered_env["RLHF_API_DEGRADED_SECONDS"] == "45"
    cfg = OperatorConfig.from_env(rendered_env)
    assert (cfg.log_format, cfg.api_degraded_seconds) == ("json", 45)
    assert OperatorConfig.from_env(container_env(rendered({}))).log_format == "full"


@pytest.mark.parametrize("values", [{"logFormat": "xml"}, {"api": {"degradedSeconds": 0}},
                                    {"metrics": {"prometheusRule": {"rewardErrorRate": 2}}},
                                    {"metrics": {"grafanaDashboard": {"enabled": "yes"}}}])
def test_schema_refuses_bad_monitoring_and_logging_values(values):
    with pytest.raises(helm.HelmError):
        rendered(values)


def test_metric_name_extraction_reads_promql_as_meant():
    assert metric_names('histogram_quantile(0.95, sum by (le, handler) (rate(rlhf_x_bucket{a="b or c"}[5m])))') \
        == {"rlhf_x_bucket"}
    assert metric_names("rlhf_a == 1 or rlhf_b > 0.05 unless on (namespace) rlhf_c") == {"rlhf_a", "rlhf_b", "rlhf_c"}


def test_monitoring_values_lint_and_the_configmap_is_a_valid_core_object():
    report = helm.lint(str(CHART), MONITORING, namespace=NAMESPACE)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 3] == [], report
    [configmap] = [o for o in rendered(MONITORING) if o["kind"] == "ConfigMap"
                   and "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert core_errors(configmap) == []


def test_prometheus_rule_has_the_shape_the_prometheus_operator_accepts():
    """monitoring.coreos.com/v1 PrometheusRule: groups with unique names; each rule records or alerts
    (one of the two), has an expr, and string-valued labels and annotations."""
    [rule] = [o for o in rendered(MONITORING) if o["kind"] == "PrometheusRule"]
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str) and r["expr"].strip()
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            for mapping in (r.get("labels", {}), r.get("annotations", {})):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()), mapping
