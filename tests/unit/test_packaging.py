"""The operator image carries no ML stack: rlhf_operator, rlhf_api and rlhf_cli import without it."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import rlhf_api
import rlhf_cli
import rlhf_operator

BLOCK = ("torch", "ray", "vllm", "deepspeed", "transformers", "numpy")

SCRIPT = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCK!r}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print('imported', len(sys.argv) - 1)
"""


def test_operator_package_imports_without_the_worker_stack():
    modules = [f"{pkg.__name__}.{m.name}" for pkg in (rlhf_api, rlhf_cli, rlhf_operator)
               for m in pkgutil.iter_modules(pkg.__path__) if m.name != "__main__"]
    modules += ["rlhf_api", "rlhf_cli", "rlhf_operator"]
    result = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"imported {len(modules)}" in result.stdout


def test_cli_validate_and_render_work_without_the_worker_stack(tmp_path):
    job = Path(__file__).resolve().parents[2] / "examples" / "math-gsm8k" / "job.yaml"
    script = SCRIPT.replace("for name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('imported', len(sys.argv) - 1)\n",
                            "from rlhf_cli.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    for command in (["validate", str(job)], ["render", str(job)]):
        result = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
