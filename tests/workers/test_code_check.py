"""The worker entry point of the code check (``python -m rlhf_workers --check-code``), run for real in
a subprocess on CPU as the preflight pod runs it: it imports the code, calls it on rows of the
job's data, and writes its verdict as JSON to the result file (the pod's termination message)."""

import json
import subprocess
import sys
import time

import pytest

from rlhf_api.spec import RLHFJobSpec
from rlhf_api.workerconfig import WorkerConfig

ROWS = [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}, {"question": "1+1?", "answer": "2"}]

GOOD = '''
def reward_func(queries, prompts, labels):
    return {"rewards": [1.0 if q.endswith(l) else 0.0 for q, l in zip(queries, labels)]}
'''
MISSING_IMPORT = "import os\nimport not_a_module\n" + GOOD
RAISES_ON_A_ROW = '''
def reward_func(queries, prompts, labels):
    out = []
    for q, l in zip(queries, labels):
        if l == "6":
            raise ValueError("cannot grade " + l)
        out.append(1.0)
    return {"rewards": out}
'''
WRONG_LENGTH = '''
def reward_func(queries, prompts, labels):
    return {"rewards": [0.5]}
'''
HANGS = '''
import time
def reward_func(queries, prompts, labels):
    while True:
        time.sleep(0.1)
'''
EXITS = '''
import sys
def reward_func(queries, prompts, labels):
    sys.exit(3)
'''
AGENT = '''
from openrlhf.utils.agent import AgentInstanceBase

class AgentInstance(AgentInstanceBase):
    async def reset(self, states, **kwargs):
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        return {"rewards": 1.0, "scores": 1.0, "environment_feedback": "", "done": True}
'''
AGENT_BAD_STEP = AGENT.replace('"environment_feedback": "", ', "")


def run(tmp_path, code, *, agent=False, timeout=None, data=ROWS):
    code_file = tmp_path / ("agent_func.py" if agent else "reward_func.py")
    code_file.write_text(code)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in data))
    spec = {"model": {"path": "/models/none"},
            "data": {"prompts": str(prompts), "inputKey": "question", "labelKey": "answer"}}
    spec["agent" if agent else "reward"] = {"path": str(code_file)} if agent else {"function": {"path": str(code_file)}}
    config = WorkerConfig(job_name="demo", spec=RLHFJobSpec.model_validate(spec), output_dir=str(tmp_path / "out"),
                          reward_code_path=None if agent else str(code_file),
                          agent_code_path=str(code_file) if agent else None)
    (tmp_path / "worker.json").write_text(config.to_json())
    result = tmp_path / "termination-log"
    command = [sys.executable, "-m", "rlhf_workers", "--check-code", "--config", str(tmp_path / "worker.json"),
               "--result-file", str(result)] + (["--check-timeout", str(timeout)] if timeout else [])
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.is_file(), done.stderr[-3000:]
    verdict = json.loads(result.read_text())
    return done.returncode, verdict, time.monotonic() - started


def test_a_good_reward_passes_on_rows_of_the_jobs_data(tmp_path):
    code, verdict, _ = run(tmp_path, GOOD)
    assert code == 0 and verdict["ok"] is True
    assert "3 rows" in verdict["message"] and "rewards 1, 1, 1" in verdict["message"]  # labels given as answers


def test_an_import_that_fails_names_the_module_and_the_line(tmp_path):
    code, verdict, _ = run(tmp_path, MISSING_IMPORT)
    assert code == 1 and verdict["ok"] is False
    assert "not_a_module" in verdict["message"] and "line 2" in verdict["message"]


def test_a_reward_raising_on_one_row_is_quoted_with_its_line(tmp_path):
    code, verdict, _ = run(tmp_path, RAISES_ON_A_ROW)
    assert code == 1
    assert "ValueError: cannot grade 6" in verdict["message"]
    assert "reward_func.py, line 6" in verdict["message"]


@pytest.mark.slow
def test_a_contract_violation_fails(tmp_path):
    code, verdict, _ = run(tmp_path, WRONG_LENGTH)
    assert code == 1 and "rewards" in verdict["message"] and "3" in verdict["message"]


@pytest.mark.slow
def test_a_hanging_reward_is_stopped_after_the_timeout(tmp_path):
    code, verdict, elapsed = run(tmp_path, HANGS, timeout=1.5)
    assert code == 1 and "did not return within" in verdict["message"] and "1.5 s" in verdict["message"]
    assert "was killed" in verdict["message"]
    assert elapsed < 60


@pytest.mark.slow
def test_a_reward_that_exits_the_process_fails_and_says_so(tmp_path):
    code, verdict, _ = run(tmp_path, EXITS)
    assert code == 1 and "sys.exit(3)" in verdict["message"]


@pytest.mark.slow
def test_an_agent_gets_reset_and_one_step(tmp_path):
    code, verdict, _ = run(tmp_path, AGENT, agent=True)
    assert code == 0 and "reset and one step passed on 3 rows" in verdict["message"]
    (tmp_path / "bad").mkdir()
    code, verdict, _ = run(tmp_path / "bad", AGENT_BAD_STEP, agent=True)
    assert code == 1 and "without environment_feedback" in verdict["message"]


def test_data_unreadable_here_still_checks_the_code_on_placeholder_rows(tmp_path):
    code, verdict, _ = run(tmp_path, GOOD, data=[{"prompt": "no question key"}])
    assert code == 0 and "placeholder rows" in verdict["message"] and "data.inputKey" in verdict["message"]
    (tmp_path / "bad").mkdir()
    code, verdict, _ = run(tmp_path / "bad", RAISES_ON_A_ROW.replace('l == "6"', "True"), data=[{"prompt": "x"}])
    assert code == 1 and "cannot grade" in verdict["message"] and "placeholder rows" in verdict["message"]


def test_an_unreadable_config_cannot_be_checked(tmp_path):
    (tmp_path / "worker.json").write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "rlhf_workers", "--check-code", "--config", str(tmp_path / "worker.json"),
                           "--result-file", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cannot read the worker config" in json.loads((tmp_path / "out.json").read_text())["message"]


@pytest.mark.slow
@pytest.mark.parametrize("size", [20000])
def test_the_result_fits_a_termination_message(tmp_path, size):
    raising = f"def reward_func(queries, prompts, labels):\n    raise RuntimeError('x' * {size})\n"
    _, verdict, _ = run(tmp_path, raising)
    assert len(json.dumps(verdict).encode()) <= 4096


def test_rlhf_run_checks_the_code_before_starting_ray(tmp_path):
    import yaml

    (tmp_path / "reward_func.py").write_text(RAISES_ON_A_ROW)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    job = {"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "demo"},
           "spec": {"model": {"path": "org/not-downloaded"},  # a hub id: never fetched, the check fails first
                    "data": {"prompts": "prompts.jsonl", "inputKey": "question", "labelKey": "answer"},
                    "reward": {"function": {"path": "reward_func.py"}}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "run", str(tmp_path / "job.yaml"), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "failed its check before Ray was started" in done.stderr
    assert "ValueError: cannot grade 6" in done.stderr and "reward_func.py, line 6" in done.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
    assert time.monotonic() - started < 120
