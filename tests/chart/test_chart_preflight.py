"""The chart's switch for the code-check pods (RLHF_PREFLIGHT_PODS), rendered with Helm's own engine
and read back by the operator's settings."""

from pathlib import Path

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")

CHART = Path(__file__).resolve().parents[2] / "charts" / "rlhf-operator"


def operator_env(values):
    rendered = helm_python.Chart.load(str(CHART)).render(values, name="rlhf", namespace="rlhf-system")
    docs = [d for path, text in rendered.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    [deployment] = [d for d in docs if d.get("kind") == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values, expected", [({}, True), ({"preflight": {"pods": False}}, False)])
def test_preflight_pods_value_reaches_the_operator(values, expected):
    from rlhf_operator.config import OperatorConfig

    env = operator_env(values)
    assert env["RLHF_PREFLIGHT_PODS"] == ("true" if expected else "false")
    settings = OperatorConfig.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.preflight_pods is expected
