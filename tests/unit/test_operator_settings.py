"""Operator settings read with pydantic-settings: a bad or unknown RLHF_* variable is one clear
line naming it, never a traceback or a silent default; the workers' own RLHF_* variables pass."""

import pytest

from rlhf_operator.config import ENV_NAMES, ConfigError, OperatorConfig


@pytest.mark.parametrize("env, says", [
    ({"RLHF_STALL_SECONDS": "10m"}, "RLHF_STALL_SECONDS='10m' is not valid: expected a number of seconds such as 600"),
    ({"RLHF_STALL_SECONDS": "0"}, "RLHF_STALL_SECONDS='0' is not valid: expected a number above 0"),
    ({"RLHF_HEALTH_PORT": "http"}, "RLHF_HEALTH_PORT='http' is not valid: expected a whole number"),
    ({"RLHF_ALLOW_SECRET_REFERENCES": "maybe"}, "RLHF_ALLOW_SECRET_REFERENCES='maybe' is not valid: expected true or false"),
    ({"RLHF_LOG_FORMAT": "xml"}, "RLHF_LOG_FORMAT='xml' is not valid"),
    ({"RLHF_STAL_SECONDS": "60"}, "RLHF_STAL_SECONDS is not an operator setting: did you mean RLHF_STALL_SECONDS?"),
    ({"RLHF_API_DEGRADED": "60"}, "RLHF_API_DEGRADED is not an operator setting: did you mean RLHF_API_DEGRADED_SECONDS?"),
])
def test_a_bad_or_unknown_variable_is_one_line_naming_it(env, says):
    with pytest.raises(ConfigError) as caught:
        OperatorConfig.from_env(env)
    message = str(caught.value)
    assert message.startswith(says) and "\n" not in message


def test_the_workers_variables_are_not_flagged_and_values_parse():
    cfg = OperatorConfig.from_env({
        "RLHF_CONFIG": "/etc/rlhf/config/worker.json", "RLHF_JOB_NAME": "demo", "RLHF_REWARD_TOKEN": "t",
        "RLHF_LOCAL_RUN": "1", "RLHF_WORKER_LOGS": "1", "RLHF_PLACEMENT_TIMEOUT_S": "60",
        "RLHF_API_DEGRADED_SECONDS": "30", "RLHF_LOG_LEVEL": "debug", "RLHF_LOG_FORMAT": "JSON",
        "RLHF_PROGRESS_TIMEOUT": "2.5", "RLHF_PEERING_PRIORITY": "7", "RLHF_KUBE_CONTEXT": "kind-dev",
        "RLHF_WEBHOOK_CERT_DIR": "", "PATH": "/bin",
    })
    assert (cfg.api_degraded_seconds, cfg.log_level, cfg.log_format) == (30, "DEBUG", "json")
    assert (cfg.progress_timeout, cfg.peering_priority, cfg.kube_context) == (2.5, 7, "kind-dev")
    assert cfg.webhook_cert_dir is None  # empty is unset, as the chart renders it


def test_every_setting_the_chart_may_render_is_known():
    assert {"RLHF_NAMESPACES", "RLHF_WORKER_IMAGE", "RLHF_PROGRESS_INTERVAL_SECONDS", "RLHF_STALL_SECONDS",
            "RLHF_LOG_LEVEL", "RLHF_LOG_FORMAT", "RLHF_HEALTH_PORT", "RLHF_WEBHOOK_PORT", "RLHF_WEBHOOK_CERT_DIR",
            "RLHF_ALLOW_SECRET_REFERENCES", "RLHF_PEERING", "RLHF_API_DEGRADED_SECONDS"} <= ENV_NAMES


def test_no_cluster_to_connect_to_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    from rlhf_operator.main import run_operator

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert run_operator(config=OperatorConfig(kubeconfig=str(tmp_path / "missing"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("rlhf operator: no cluster to connect to: kubeconfig ") and err.count("\n") == 1
    assert "--kubeconfig" in err
