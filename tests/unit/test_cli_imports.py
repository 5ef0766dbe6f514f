"""`rlhf validate` resolves every import of the job's reward/agent code (rlhf_api.imports) without
importing it: refused on the default worker image, a warning on a custom cluster.image."""

import subprocess
import sys

import yaml

from support.jobs import job

OK_TAIL = "\ndef reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"
# Importing this file would write a marker: the check must never run the code.
EXECUTES = "open(__file__ + '.ran', 'w').write('ran')\n"


def validate(tmp_path, doc):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.run([sys.executable, "-m", "rlhf_cli.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_an_unresolvable_inline_import_is_refused_with_field_line_module_and_fix(tmp_path):
    result = validate(tmp_path, job(reward={"function": {"inline": "import json\nimport not_a_module\n" + OK_TAIL}}))
    assert result.returncode == 2, result.stdout
    [line] = [text for text in result.stderr.splitlines() if "spec." in text]  # one line per unresolved import
    assert "spec.reward.function.inline: reward_func.py, line 2: `import not_a_module`" in line
    yaml_line = next(i for i, text in enumerate((tmp_path / "job.yaml").read_text().splitlines(), 1) if "inline:" in text)
    assert line.startswith(f"{tmp_path / 'job.yaml'}:{yaml_line}: ")  # FILE:LINE: field: problem, as every error
    assert "no module named 'not_a_module'" in line and "fix:" in line


def test_the_images_and_the_standard_librarys_modules_pass(tmp_path):
    code = "import re, math\nimport torch\nfrom transformers import AutoTokenizer\n" + OK_TAIL
    result = validate(tmp_path, job(reward={"function": {"inline": code}}))
    assert result.returncode == 0, result.stderr


def test_a_custom_image_turns_the_refusal_into_a_warning(tmp_path):
    doc = job(reward={"function": {"inline": "import my_company_grader\n" + OK_TAIL}},
              cluster={"image": "registry.example.com/team/workers:7"})
    result = validate(tmp_path, doc)
    assert result.returncode == 0, result.stderr
    assert "warning: spec.reward.function.inline" in result.stderr and "my_company_grader" in result.stderr
    assert "registry.example.com/team/workers:7" in result.stderr


def test_path_code_beside_the_job_file_is_read_not_run_and_its_siblings_resolve(tmp_path):
    (tmp_path / "grader.py").write_text(EXECUTES + "import helpers\nimport sympyy\n" + OK_TAIL)
    (tmp_path / "helpers.py").write_text("X = 1\n")
    result = validate(tmp_path, job(reward={"function": {"path": "grader.py"}}))
    assert result.returncode == 2
    assert "spec.reward.function.path: reward_func.py, line 3: `import sympyy`" in result.stderr
    assert "did you mean 'sympy'?" in result.stderr and "helpers" not in result.stderr
    assert not (tmp_path / "grader.py.ran").exists()


def test_an_agents_imports_are_checked_too(tmp_path):
    agent = "from openrlhf.utils.agent import AgentInstanceBase\nimport gymnasium_missing\nclass AgentInstance(AgentInstanceBase):\n    pass\n"
    doc = job(agent={"inline": agent})
    doc["spec"].pop("reward", None)
    result = validate(tmp_path, doc)
    assert result.returncode == 2
    assert "spec.agent.inline: agent_func.py, line 2: `import gymnasium_missing`" in result.stderr
