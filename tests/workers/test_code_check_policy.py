"""The code check honours the job's fault policy: a reward that raises on a few rows passes (with a
warning quoting the first error) when ``reward.maxErrorRate`` tolerates that share, and fails when
the share is larger, when every row faults, or when a row's value breaks the contract. Each check
runs the reward for real in its sandbox, as the preflight pod does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhf_api.spec import RewardSpec
from rlhf_workers.code_check import check_reward

ROWS = [("2+2?", "4"), ("3+3?", "6"), ("1+1?", "2"), ("5+5?", "10")]

RAISES_ON_SOME = '''
def reward_func(queries, prompts, labels):
    out = []
    for label in labels:
        if label in BAD:
            raise ValueError("cannot grade " + label)
        out.append(1.0)
    return {"rewards": out}
'''


def _reward(tmp_path, bad: tuple[str, ...]) -> str:
    path = tmp_path / "reward_func.py"
    path.write_text(f"BAD = {bad!r}\n" + RAISES_ON_SOME)
    return str(path)


def _spec(**policy) -> RewardSpec:
    return RewardSpec.model_validate({"function": {"path": "/x/reward_func.py"}, **policy})


def test_one_faulting_row_in_four_passes_with_a_warning_when_max_error_rate_allows_it(tmp_path):
    outcome = check_reward(_reward(tmp_path, ("6",)), ROWS, 30, _spec(onError="skip", maxErrorRate=0.25))
    assert outcome.ok and outcome.exit_code == 0, outcome.message
    assert "1 of 4 rows (25%, within reward.maxErrorRate 25%" in outcome.warning
    assert "row 1: reward_func raised ValueError: cannot grade 6 at reward_func.py, line 7" in outcome.warning
    assert "rewards 1, -, 1, 1" in outcome.message and outcome.warning in outcome.message
    assert json.loads(outcome.to_json())["warning"].startswith("reward_func faulted on 1 of 4 rows")


def test_fallback_policy_is_named_in_the_warning(tmp_path):
    outcome = check_reward(_reward(tmp_path, ("6",)), ROWS, 30,
                           _spec(onError="fallback", fallbackReward=-1, maxErrorRate=0.5))
    assert outcome.ok and "gives them reward.fallbackReward (-1)" in outcome.warning


def test_a_faulted_share_above_max_error_rate_fails_quoting_the_first_error(tmp_path):
    outcome = check_reward(_reward(tmp_path, ("6", "2")), ROWS, 30, _spec(maxErrorRate=0.25))
    assert not outcome.ok and outcome.exit_code == 1 and not outcome.warning
    assert "faulted on 2 of 4 rows" in outcome.message and "50% > reward.maxErrorRate 25%" in outcome.message
    assert "row 1: reward_func raised ValueError: cannot grade 6 at reward_func.py, line 7" in outcome.message
    default = check_reward(_reward(tmp_path, ("6",)), ROWS, 30, _spec())  # 25% > the default 20%
    assert not default.ok and "25% > reward.maxErrorRate 20%" in default.message


def test_every_row_faulting_fails_whatever_max_error_rate_says(tmp_path):
    outcome = check_reward(_reward(tmp_path, ("4", "6", "2", "10")), ROWS, 30, _spec(maxErrorRate=1.0))
    assert not outcome.ok and "faulted on 4 of 4 rows" in outcome.message and "every row" in outcome.message


def test_a_row_that_breaks_the_contract_fails_even_when_faults_are_tolerated(tmp_path):
    path = tmp_path / "reward_func.py"
    path.write_text('''
def reward_func(queries, prompts, labels):
    if len(labels) > 1:
        raise ValueError("one at a time")
    return {"rewards": [float("nan")] if labels[0] == "2" else [1.0]}
''')
    outcome = check_reward(str(path), ROWS, 30, _spec(maxErrorRate=0.5))
    assert not outcome.ok and "(row 2 alone)" in outcome.message


def test_a_reward_that_raises_only_on_the_whole_batch_passes_with_a_warning(tmp_path):
    path = tmp_path / "reward_func.py"
    path.write_text('''
def reward_func(queries, prompts, labels):
    if len(labels) > 1:
        raise ValueError("one at a time")
    return {"rewards": [1.0]}
''')
    outcome = check_reward(str(path), ROWS, 30, _spec())
    assert outcome.ok and "each row alone passed" in outcome.warning and "ValueError: one at a time" in outcome.warning


@pytest.mark.slow
def test_the_check_entry_point_passes_a_tolerated_fault_with_its_warning_in_the_verdict(tmp_path):
    from rlhf_api.workerconfig import WorkerConfig
    from rlhf_api.spec import RLHFJobSpec

    code = _reward(tmp_path, ("6",))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ROWS))
    spec = RLHFJobSpec.model_validate({
        "model": {"path": "/models/none"}, "data": {"prompts": str(prompts), "inputKey": "question", "labelKey": "answer"},
        "reward": {"function": {"path": code}, "maxErrorRate": 0.25}})
    config = WorkerConfig(job_name="demo", spec=spec, output_dir=str(tmp_path / "out"), reward_code_path=code)
    (tmp_path / "worker.json").write_text(config.to_json())
    done = subprocess.run([sys.executable, "-m", "rlhf_workers", "--check-code", "--config", str(tmp_path / "worker.json"),
                           "--result-file", str(tmp_path / "result.json")], capture_output=True, text=True, timeout=120)
    verdict = json.loads((tmp_path / "result.json").read_text())
    assert done.returncode == 0 and verdict["ok"] is True, done.stdout + done.stderr
    assert "cannot grade 6" in verdict["warning"] and "WARNING: reward_func faulted on 1 of 4 rows" in done.stderr
