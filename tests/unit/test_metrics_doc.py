"""docs/metrics.md covers the operator's Prometheus series and reads metrics.jsonl keys right."""

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rlhf_api.progress import ProgressReport
from rlhf_operator.metrics import Metrics
from support.metricsdoc import prometheus_series, undocumented_keys


def test_every_series_the_operator_exports_has_a_row():
    metrics = Metrics()
    metrics.note_job("team-a", "demo", {"phase": "Running", "rayJobName": "demo", "dashboardURL": "demo-head-svc:8265",
                                        "conditions": [{"type": "Stalled", "status": "True"}]})
    metrics.note_report("team-a", "demo", ProgressReport(state="training", step=3, total_steps=10, reward_mean=0.5,
                                                         score_mean=0.5, kl=0.01, reward_error_rate=0.0,
                                                         heartbeat="2026-12-02T13:00:00Z"))
    metrics.api_error("GET", 500)
    metrics.timed("launch", lambda: None)()
    exported = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.startswith(("process_", "python_")) or (family.type == "gauge" and family.name.endswith("_created")):
            continue  # the process's own; counters' creation times
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert {"rlhf_job_step", "rlhf_api_errors_total"} <= exported
    assert exported == prometheus_series()


def test_a_quickstart_row_is_documented_and_unknown_keys_are_caught():
    # A row `rlhf run examples/quickstart.yaml` wrote (the end-to-end tests check every row they write).
    row = json.loads((Path(__file__).parents[1] / "data" / "quickstart_metrics_row.json").read_text())
    assert len(row) > 30 and undocumented_keys(set(row)) == set()
    assert undocumented_keys({"reward/new_thing", "extra/a/b", "time"}) == {"reward/new_thing", "extra/a/b", "time"}
