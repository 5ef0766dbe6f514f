"""Import resolution of reward/agent code before anything runs (rlhf_api.imports): parsed, never
imported; resolved against the standard library, the worker image's module list and the files
beside the code."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_api import imports
from rlhf_api.imports import ImageModules, import_findings, import_statements, unresolved_imports

REWARD = "reward_func.py"
TAIL = "\ndef reward_func(queries, prompts, labels):\n    return {'rewards': [0.0] * len(queries)}\n"


def problems(source, **kw):
    return unresolved_imports({REWARD: source + TAIL}, **kw)


def test_stdlib_and_the_images_modules_resolve():
    assert problems("import os, json\nimport torch.nn.functional as F\nfrom transformers import AutoTokenizer\n"
                    "import numpy as np\nfrom collections import Counter\nimport rlhf_workers\n") == []


def test_an_unknown_module_is_named_with_its_line_and_the_fix():
    [problem] = problems("import os\n\nimport not_a_module\n")
    assert problem.statement.line == 3 and problem.statement.top == "not_a_module"
    message = problem.message()
    assert message.startswith("reward_func.py, line 3: `import not_a_module`: no module named 'not_a_module'")
    assert "remove the import, ship the module beside the code, or build an image that has it and set" \
           " spec.cluster.image" in message


def test_a_misspelt_module_gets_a_suggestion():
    [problem] = problems("from nunpy import array\n")
    assert problem.suggestion == "numpy" and "did you mean 'numpy'?" in problem.message()


def test_test_only_packages_of_the_dev_environment_are_not_in_the_image_list():
    names = imports.image_modules().names
    assert {"torch", "vllm", "ray", "transformers", "numpy", "rlhf_workers", "yaml"} <= names
    assert not {"pytest", "kmock", "hypothesis", "kubernetes_validate"} & names
    assert not set(sys.stdlib_module_names) & names  # the standard library is resolved apart


def test_imports_meant_to_fail_softly_are_not_judged():
    source = ("try:\n    import ujson as json\nexcept ImportError:\n    import json\n"
              "try:\n    import orjson\nexcept (ModuleNotFoundError, ValueError):\n    orjson = None\n"
              "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import not_installed_stubs\n")
    assert problems(source) == []


def test_imports_inside_functions_and_unguarded_try_blocks_are_judged():
    source = ("def helper():\n    import lazy_missing\n"
              "try:\n    import also_missing\nexcept KeyError:\n    pass\n")
    assert [p.statement.top for p in problems(source)] == ["lazy_missing", "also_missing"]


def test_sibling_files_resolve():
    assert problems("import helpers\nfrom graders.math import grade\n", siblings=["helpers.py", "graders"]) == []
    # the snapshot's own files are siblings of each other
    assert unresolved_imports({REWARD: "import agent_func" + TAIL, "agent_func.py": "x = 1\n"}) == []


def test_a_relative_import_is_refused_on_any_image():
    source = "from . import helpers\n"
    errors, warnings = import_findings({REWARD: source + TAIL}, custom_image="registry.example.com/mine:1")
    assert len(errors) == 1 and "relative import" in errors[0] and warnings == []


def test_on_a_custom_image_an_unknown_module_is_a_warning_naming_the_image():
    errors, warnings = import_findings({REWARD: "import my_private_lib" + TAIL}, custom_image="reg.example.com/w:2")
    assert errors == []
    assert warnings and "'my_private_lib'" in warnings[0] and "spec.cluster.image reg.example.com/w:2" in warnings[0]
    errors, warnings = import_findings({REWARD: "import my_private_lib" + TAIL})
    assert len(errors) == 1 and warnings == []


def test_code_that_does_not_parse_is_left_to_the_contract_check():
    assert problems("def broken(:\n") == []


def test_import_statements_read_every_form():
    import ast

    found = import_statements(ast.parse("import a.b as c, d\nfrom e.f import g\nfrom .. import h\n"))
    assert [(s.line, s.module, s.level, s.top) for s in found] == [
        (1, "a.b", 0, "a"), (1, "d", 0, "d"), (2, "e.f", 0, "e"), (3, "", 2, "")]


def test_the_list_is_parsed_with_its_header():
    parsed = ImageModules.parse("# made here\n# on 3.11\nalpha\n\nbeta\n")
    assert parsed.names == {"alpha", "beta"} and parsed.header == ("made here", "on 3.11")


def test_the_generator_lists_this_environments_modules(tmp_path):
    out = tmp_path / "modules.txt"
    result = subprocess.run([sys.executable, "-m", "rlhf_api.imports", "--requirement", "rlhf-operator[cpu]",
                             "--output", str(out), "--origin", "in a test"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = ImageModules.parse(out.read_text())
    assert {"torch", "vllm", "ray", "deepspeed"} <= listed.names and "pytest" not in listed.names
    assert any("in a test" in line for line in listed.header)
    # The committed list is what the generator makes of this .venv (regenerate it when the stack changes).
    committed = imports.image_modules().names
    assert committed == listed.names, sorted(committed ^ listed.names)


def test_the_worker_image_generates_the_list_from_its_own_environment():
    dockerfile = (Path(__file__).resolve().parents[2] / "workers" / "Dockerfile").read_text()
    assert "python3 -m rlhf_api.imports --output /opt/rlhf/worker_modules.txt" in dockerfile


@pytest.mark.parametrize("name", ["os", "json", "subprocess", "asyncio"])
def test_stdlib_names_come_from_the_interpreter(name):
    assert problems(f"import {name}\n") == []


def test_agent_files_may_import_openrlhfs_agent_module_which_the_workers_provide():
    agent = "from openrlhf.utils.agent import AgentInstanceBase\nclass AgentInstance(AgentInstanceBase):\n    pass\n"
    assert unresolved_imports({"agent_func.py": agent}) == []
    # only that module, and only for agents (a reward file gets no such alias)
    assert [p.statement.module for p in unresolved_imports({"agent_func.py": "import openrlhf.models\n"})] == \
        ["openrlhf.models"]
    assert len(unresolved_imports({REWARD: "from openrlhf.utils.agent import AgentInstanceBase\n" + TAIL})) == 1
