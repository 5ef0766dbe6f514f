"""Every shell command and YAML block in the docs is exercised, so the docs cannot rot.

Each Markdown file's blocks run in order in a scratch directory that sees the repository (and
the files the doc itself names with ``<!-- file: NAME -->`` before a block, such as the
``job.yaml`` a README shows and later applies; a named shell block is a script's content, written
and not run):

- YAML: an RLHFJob is validated by the spec model; a spec fragment (``cluster:`` ...) inside a
  minimal job; Kubernetes kinds against their schemas (kubernetes-validate); others must at
  least name their kind.
- Python: compiled; a ``reward_func`` is checked against OpenRLHF's signature.
- Shell: ``rlhf`` commands are parsed by the real CLI and, except ``run`` and ``operator``, run;
  ``kubectl`` runs against the API emulator; ``helm install/upgrade`` renders the chart with the
  same values (Helm's own engine); ``docker build`` names a Dockerfile that declares each
  ``--build-arg``; ``python bench/...`` flags exist in the script's ``--help``; ``bash
  scripts/...`` exists (CI runs them). A program the harness does not know fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s_schemas import core_errors
from support.docblocks import ROOT, SHELL, Block, Command, blocks, commands, markdown_files

DOCS = markdown_files()
CORE_KINDS = {"ConfigMap", "Secret", "Pod", "Service", "PersistentVolumeClaim", "ServiceAccount", "Namespace",
              "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "NetworkPolicy"}
# kubectl's own complaints about how it was called; anything else is the emulator standing in for a
# kubelet (logs, exec, cp, port-forward) or a timeout of a watch/wait, which the harness expects.
KUBECTL_USAGE_ERRORS = re.compile(r"unknown (flag|command|shorthand)|invalid argument|required flag|"
                                  r"the server doesn't have a resource type|error: must specify|"
                                  r"accepts \d+ arg|error: unable to read|does not exist|error parsing|"
                                  r"json: |yaml: |error validating|is invalid")
MINIMAL_SPEC = {"model": {"path": "/models/tiny"}, "data": {"prompts": "/data/p.jsonl"},
                "reward": {"function": {"inline": "def reward_func(queries, prompts, labels):\n    return {'rewards': [0.0]*len(queries)}\n"}}}


def _id(block: Block) -> str:
    return block.where


def _named_files(path: Path) -> dict[int, str]:
    """Line of each block -> the file name given to it by ``<!-- file: NAME -->`` just before."""
    names, pending = {}, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.fullmatch(r"<!-- file: (\S+) -->", line.strip())
        if match:
            pending = match.group(1)
        elif line.startswith("```") and pending:
            names[number] = pending
            pending = None
    return names


# ------------------------------------------------------------------ YAML and Python


def check_yaml(block: Block) -> None:
    for doc in yaml.safe_load_all(block.text):
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        if kind == "RLHFJob":
            from rlhf_api.validation import parse_job

            parse_job(doc)
        elif kind in CORE_KINDS:
            assert core_errors(doc) == [], f"{block.where}: {core_errors(doc)}"
        elif kind:
            assert doc.get("apiVersion") and (doc.get("metadata") or {}).get("name"), f"{block.where}: {kind} unnamed"
        else:  # a fragment of a spec, shown on its own
            from rlhf_api.spec import RLHFJobSpec

            unknown = set(doc) - set(RLHFJobSpec.model_json_schema(by_alias=True)["properties"])
            assert not unknown, f"{block.where}: neither a Kubernetes object nor a spec fragment: {sorted(unknown)}"
            from rlhf_api.validation import parse_job

            parse_job({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "doc"},
                       "spec": {**MINIMAL_SPEC, **doc}})


def check_python(block: Block) -> None:
    code = compile(block.text, block.where, "exec")
    assert code is not None
    if "def reward_func" in block.text:
        from rlhf_api.contract import check_reward_source

        check_reward_source(block.text, block.where)


# ------------------------------------------------------------------ shell


def _run(argv: list[str], cwd: Path, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def check_rlhf(cmd: Command, cwd: Path, where: str) -> None:
    from rlhf_cli.cli import build_parser

    args = list(cmd.argv[1:])
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `{' '.join(cmd.argv)}` does not parse (exit {exc.code})") from None
    if args[0] in ("run", "operator"):
        return  # parsed; run by their own end-to-end tests (the quickstart: tests/workers)
    done = _run([sys.executable, "-m", "rlhf_cli", *args], cwd)
    assert done.returncode == 0, f"{where}: `{' '.join(cmd.argv)}` exited {done.returncode}: {done.stderr[-2000:]}"
    if cmd.stdout_to:  # what it wrote is what later commands of the doc read: it must be valid too
        (cwd / cmd.stdout_to).write_text(done.stdout)
        if cmd.stdout_to.endswith((".yaml", ".yml")):
            check_yaml(Block(cwd / cmd.stdout_to, 1, "yaml", done.stdout))


def check_kubectl(cmd: Command, cwd: Path, where: str, kube) -> None:
    args = list(cmd.argv[1:])
    for i, word in enumerate(args):
        if word in ("-n", "--namespace") and i + 1 < len(args):
            kube.create_namespace(args[i + 1]) if not kube.get("v1/namespaces", args[i + 1]) else None
    if args[0] == "wait":
        args.append("--timeout=1s")
    base = [shutil.which("kubectl"), f"--kubeconfig={kube.kubeconfig_path}", f"--cache-dir={kube.kubectl_cache_dir}"]
    try:
        done = _run(base + args, cwd, timeout=8)
    except subprocess.TimeoutExpired:
        assert {"-w", "--watch", "--follow", "-f"} & set(args) or args[0] == "port-forward", \
            f"{where}: `{' '.join(cmd.argv)}` hung"
        return
    text = done.stdout + done.stderr
    if done.returncode != 0:
        assert not KUBECTL_USAGE_ERRORS.search(done.stderr), f"{where}: `{' '.join(cmd.argv)}`: {done.stderr}"
    assert "Traceback" not in text


def _helm_values(args: list[str]) -> tuple[dict, str, str]:
    values: dict = {}
    namespace, positional, i = "default", [], 0
    while i < len(args):
        word = args[i]
        if word in ("-n", "--namespace"):
            namespace, i = args[i + 1], i + 2
            continue
        if word in ("--set", "--set-string"):
            key, _, value = args[i + 1].partition("=")
            node = values
            parts = re.split(r"(?<!\\)\.", key)
            for part in parts[:-1]:
                node = node.setdefault(part.replace("\\.", "."), {})
            node[parts[-1].replace("\\.", ".")] = (value if word == "--set-string" else yaml.safe_load(value))
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        positional.append(word)
        i += 1
    return values, namespace, positional[-1]


def check_helm(cmd: Command, cwd: Path, where: str) -> None:
    helm = pytest.importorskip("helm_python")
    args = list(cmd.argv[1:])
    if args[:2] == ["dependency", "build"]:
        chart = yaml.safe_load((cwd / args[2] / "Chart.yaml").read_text())
        assert chart.get("dependencies"), f"{where}: {args[2]} has no dependencies to build"
        return
    assert args[0] in ("install", "upgrade", "template"), f"{where}: helm {args[0]} is not checked"
    values, namespace, chart_path = _helm_values(args[1:])
    if (values.get("kuberay-operator") or {}).get("enabled") and not (cwd / chart_path / "charts").is_dir():
        values["kuberay-operator"]["enabled"] = False  # the subchart needs `helm dependency build` (a download)
    rendered = helm.Chart.load(str(cwd / chart_path)).render(values, name=args[1], namespace=namespace)
    assert any(path.endswith("deployment.yaml") for path in rendered), f"{where}: nothing rendered"


def check_docker(cmd: Command, cwd: Path, where: str, built: dict[str, str]) -> None:
    """``built``: image tag -> its Dockerfile's text, for the push and run commands after the build."""
    args = list(cmd.argv[1:])
    if args[0] == "push":
        assert args[1] in built, f"{where}: pushes {args[1]}, which the doc never built"
        return
    if args[0] == "run":
        image_at = next(i for i, w in enumerate(args[1:], 1) if not w.startswith("-"))
        image, rest = args[image_at], args[image_at + 1:]
        assert image in built, f"{where}: runs {image}, which the doc never built"
        if rest[:1] == ["cat"]:
            assert rest[1] in built[image], f"{where}: nothing in the image's Dockerfile writes {rest[1]}"
        return
    assert args[0] == "build", f"{where}: docker {args[0]} is not checked"
    dockerfile = cwd / args[args.index("-f") + 1]
    declared = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.M))
    for i, word in enumerate(args):
        if word == "--build-arg":
            assert args[i + 1].split("=")[0] in declared, f"{where}: {dockerfile.name} has no ARG {args[i + 1]}"
        if word == "-t":
            built[args[i + 1]] = dockerfile.read_text()


def check_python_script(cmd: Command, cwd: Path, where: str) -> None:
    script = cmd.argv[1]
    if script == "-m":
        return
    assert (cwd / script).is_file(), f"{where}: no {script}"
    help_text = _run([sys.executable, script, "--help"], cwd, timeout=60).stdout
    for flag in (w.split("=")[0] for w in cmd.argv[2:] if w.startswith("--")):
        assert flag in help_text, f"{where}: {script} has no {flag}"


def check_shell_block(block: Block, cwd: Path, kube) -> None:
    built: dict[str, str] = {}
    for cmd in commands(block.text):
        program = cmd.program
        if program == "rlhf":
            check_rlhf(cmd, cwd, block.where)
        elif program == "kubectl":
            if shutil.which("kubectl") is None:
                pytest.skip("kubectl not installed")
            check_kubectl(cmd, cwd, block.where, kube)
        elif program == "helm":
            check_helm(cmd, cwd, block.where)
        elif program == "docker":
            check_docker(cmd, cwd, block.where, built)
        elif program in ("python", "python3"):
            check_python_script(cmd, cwd, block.where)
        elif program == "bash":
            assert (cwd / cmd.argv[1]).is_file(), f"{block.where}: no {cmd.argv[1]}"
        elif program == "pip":
            from packaging.requirements import Requirement

            for word in cmd.argv[2:]:
                if not word.startswith("-"):
                    Requirement(word)
        elif program in ("cd", "git", "export"):
            continue
        else:
            raise AssertionError(f"{block.where}: `{program}` is not exercised: add a check to tests/docs/test_doc_blocks.py")


# ------------------------------------------------------------------ the tests


def _workdir(tmp_path: Path) -> Path:
    for child in ROOT.iterdir():
        if child.name not in (".git", ".venv"):
            (tmp_path / child.name).symlink_to(child)
    return tmp_path


@pytest.fixture(scope="module")
def kube():
    from support.emulator import KubeEmulator

    with KubeEmulator() as emulator:
        # As a user's cluster has it: the generated CRD applied (its short name, printer columns).
        emulator.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml"))
        yield emulator


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_of_the_doc_is_exercised(doc, tmp_path, kube):
    cwd = _workdir(tmp_path)
    names = _named_files(doc)
    for block in blocks([doc]):
        if block.line in names:  # a file the doc shows; later commands use it
            (cwd / names[block.line]).write_text(block.text)
            if block.lang in SHELL:
                continue  # a script's content, not commands to type
        if block.lang in ("yaml", "yml"):
            check_yaml(block)
        elif block.lang == "python":
            check_python(block)
        elif block.lang in SHELL:
            check_shell_block(block, cwd, kube)


def test_commands_are_never_in_plain_fences():
    """A block without a language is output; a command there would escape the checks above."""
    for block in blocks():
        if block.lang == "":
            for line in block.text.splitlines():
                assert not re.match(r"^\s*(\$ |kubectl |rlhf |helm |python |bash )", line), \
                    f"{block.where}: give the fence a language (bash) so its commands are checked: {line}"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


@pytest.mark.parametrize("doc", DOCS + [ROOT / "docs" / "reference.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans: a regular expression is no link
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        assert linked.exists(), f"{doc.relative_to(ROOT)}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{doc.relative_to(ROOT)}: {target}: no such heading"
