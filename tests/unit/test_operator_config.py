"""The operator's settings, as the Helm chart passes them through the environment."""

from rlhf_operator.config import OperatorConfig


def test_settings_come_from_the_environment_and_default_when_absent():
    cfg = OperatorConfig.from_env({
        "RLHF_NAMESPACES": "team-a, team-b,", "RLHF_PROGRESS_INTERVAL_SECONDS": "5", "RLHF_STALL_SECONDS": "120",
        "RLHF_CODE_RETRY_SECONDS": "2.5", "RLHF_RESYNC_SECONDS": "30", "RLHF_HEALTH_PORT": "0",
        "RLHF_PROGRESS_URL": "http://127.0.0.1:9000/{namespace}/{job}",
    })
    assert cfg.namespaces == ["team-a", "team-b"]
    assert (cfg.progress_interval, cfg.stall_seconds, cfg.code_retry_seconds, cfg.resync_interval) == (5, 120, 2.5, 30)
    assert cfg.health_port is None and cfg.progress_url == "http://127.0.0.1:9000/{namespace}/{job}"
    default = OperatorConfig.from_env({})
    assert default.namespaces == [] and default.health_port == 8080 and default.code_retry_seconds == 10
