"""Every import of the user's reward/agent code, resolved before anything runs, without running it.

The code is parsed, never imported (the operator must not execute user code in its own process).
An ``import`` or ``from ... import`` statement resolves when its top-level module is

* in Python's standard library (``sys.stdlib_module_names``),
* in the default worker image: ``worker_modules.txt`` beside this file lists the top-level modules
  the image can import besides the standard library. It is generated inside the image when the image
  is built (``python -m rlhf_api.imports --output FILE``, see workers/Dockerfile) and shipped with
  the operator as package data;
* or one of the user's own files shipped beside the code (``helpers.py`` or ``helpers/``).

Imports that are meant to fail softly are not judged: inside ``try`` blocks that catch ImportError
(or ModuleNotFoundError, Exception, BaseException, or everything), and under ``if TYPE_CHECKING:``.
Only top-level names are checked: ``import torch.nn.foo`` resolves when ``torch`` does.

A job on the default image is refused for an import that does not resolve; a job that sets
``spec.cluster.image`` runs code on an image this list does not describe, so it gets a warning.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import importlib.metadata as metadata
import pkgutil
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

MODULE_LIST = Path(__file__).with_name("worker_modules.txt")
# What the workers provide to agent files themselves: OpenRLHF's agent module, which
# rlhf_workers.agent.install_openrlhf_alias installs before it loads one (OpenRLHF is not installed).
AGENT_PROVIDED = frozenset({"openrlhf", "openrlhf.utils", "openrlhf.utils.agent"})
_SOFT_FAILURES = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- the image's module list


@dataclass(frozen=True)
class ImageModules:
    """What the default worker image can import besides the standard library, as its list says."""

    names: frozenset[str]
    header: tuple[str, ...] = ()  # the list's comment lines: how and where it was generated

    @classmethod
    def parse(cls, text: str) -> "ImageModules":
        header = tuple(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
        names = frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
        return cls(names, header)


@functools.lru_cache(maxsize=1)
def image_modules() -> ImageModules:
    """The module list shipped with this package (read once)."""
    return ImageModules.parse(MODULE_LIST.read_text(encoding="utf-8"))


def _top_level_of_files(dist: metadata.Distribution) -> Iterator[str]:
    """Top-level import names a distribution installs: its top_level.txt, else its file list."""
    listed = dist.read_text("top_level.txt")
    if listed:
        yield from (line.strip().replace("/", ".").split(".")[0] for line in listed.splitlines() if line.strip())
        return
    for file in dist.files or ():
        parts = file.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".egg-info", ".data")):
            continue
        if len(parts) > 1:
            yield parts[0]  # a package directory (also namespace packages, which have no __init__.py)
        elif parts[0].endswith((".py", ".so", ".pyd")):
            yield parts[0].split(".")[0]


def _closure(root: str) -> set[str]:
    """Normalized names of the distributions ``root`` (``name[extra,...]``) needs, itself included."""
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [Requirement(root)]
    while todo:
        req = todo.pop()
        key = (norm(req.name), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or ():
            child = Requirement(text)
            extras = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in extras):
                todo.append(child)
    return {name for name, _ in seen}


def installed_modules(requirement: Optional[str] = None) -> set[str]:
    """Top-level modules this interpreter can import that are not in its standard library.

    ``requirement`` (e.g. ``rlhf-operator[cpu]``): only those of the distributions it pulls in,
    for an environment that holds more than the image (a development virtualenv)."""
    names: set[str] = set()
    wanted = _closure(requirement) if requirement else None
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if wanted is None or name in wanted:
            names.update(_top_level_of_files(dist))
    if wanted is None:  # whatever else sits on sys.path in the image (modules installed without metadata)
        for entry in sys.path:
            if entry and Path(entry).is_dir() and Path(entry).resolve() != Path.cwd().resolve():
                names.update(info.name for info in pkgutil.iter_modules([entry]))
    names.update(sys.builtin_module_names)
    return {n for n in names if _IDENTIFIER.match(n) and n not in sys.stdlib_module_names}


def module_list_text(names: Iterable[str], origin: str) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    header = [
        "Top-level modules the default worker image imports besides Python's standard library.",
        f"Generated by `python -m rlhf_api.imports` on Python {version} ({sys.platform}) {origin}.",
        "The operator resolves reward/agent imports against this list (rlhf_api.imports); do not edit.",
    ]
    return "".join(f"# {line}\n" for line in header) + "".join(f"{n}\n" for n in sorted(set(names)))


# --------------------------------------------------------------------------- reading the code


@dataclass(frozen=True)
class ImportStatement:
    line: int
    module: str       # the dotted name as written ("" for `from . import x`)
    level: int        # dots of a relative import
    text: str         # the statement, for messages

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def _catches_import_errors(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any((t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else "") in _SOFT_FAILURES
               for t in types)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(tree: ast.AST) -> list[ImportStatement]:
    """The imports of ``tree`` that must resolve (soft ones left out, see the module docstring)."""
    found: list[ImportStatement] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend(ImportStatement(node.lineno, a.name, 0, f"import {a.name}") for a in node.names)
            return
        if isinstance(node, ast.ImportFrom):
            names = ", ".join(a.name for a in node.names)
            found.append(ImportStatement(node.lineno, node.module or "", node.level,
                                         f"from {'.' * node.level}{node.module or ''} import {names}"))
            return
        if isinstance(node, ast.Try) and any(_catches_import_errors(h) for h in node.handlers):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child)
            return  # the try body may fail to import: that is what the handler is for
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class UnresolvedImport:
    """One import the check could not resolve, and how to say so."""

    file: str            # reward_func.py, or the path it was read from
    statement: ImportStatement
    suggestion: Optional[str] = None

    def message(self, custom_image: Optional[str] = None) -> str:
        s = self.statement
        where = f"{self.file}, line {s.line}: `{s.text}`"
        if s.level:
            return (f"{where}: a relative import, but the code is loaded as a single top-level module, not as part"
                    f" of a package; fix: import the module by its own name")
        hint = f"did you mean {self.suggestion!r}? " if self.suggestion else ""
        if custom_image:
            return (f"{where}: module {s.top!r} is not in the default worker image nor in Python's standard library;"
                    f" spec.cluster.image {custom_image} must provide it ({hint}this is only a warning because the"
                    " image is your own)")
        return (f"{where}: no module named {s.top!r} in the default worker image, Python's standard library or the"
                f" files beside the code; fix: {hint}remove the import, ship the module beside the code, or build an"
                f" image that has it and set spec.cluster.image")


def unresolved_imports(files: Mapping[str, str], siblings: Iterable[str] = (),
                       modules: Optional[ImageModules] = None) -> list[UnresolvedImport]:
    """The imports of ``files`` (name → source) that resolve nowhere. ``siblings``: names of other
    files shipped beside the code (``helpers.py``, ``utils/``); the files themselves count too.
    Source that does not parse is left to the contract check, which says where."""
    modules = modules or image_modules()
    local = {Path(n).name.split(".")[0] for n in [*files, *siblings]}
    known = modules.names | set(sys.stdlib_module_names) | local
    problems: list[UnresolvedImport] = []
    for file, source in files.items():
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        provided = AGENT_PROVIDED if Path(file).name == "agent_func.py" else frozenset()  # workerconfig.AGENT_FILE
        for statement in import_statements(tree):
            if statement.level == 0 and (statement.top in known or statement.module in provided):
                continue
            if statement.level:
                problems.append(UnresolvedImport(file, statement))
                continue
            # The image's packages first: a misspelt third-party name is the likelier slip.
            close = difflib.get_close_matches(statement.top, sorted(modules.names | local), n=1, cutoff=0.75) or \
                difflib.get_close_matches(statement.top, sorted(sys.stdlib_module_names), n=1, cutoff=0.75)
            problems.append(UnresolvedImport(file, statement, close[0] if close else None))
    return problems


def import_findings(files: Mapping[str, str], custom_image: Optional[str] = None, siblings: Iterable[str] = (),
                    modules: Optional[ImageModules] = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the code of a job: on the default image (``custom_image`` None) an
    unresolved import is an error; on the user's own image, a warning. A relative import fails
    on any image (the code is no package), so it is always an error."""
    errors: list[str] = []
    warnings: list[str] = []
    for problem in unresolved_imports(files, siblings, modules):
        (warnings if custom_image and not problem.statement.level else errors).append(problem.message(custom_image))
    return errors, warnings


def job_import_findings(spec, sources: Mapping[str, str] = {}, siblings: Iterable[str] = (),
                        modules: Optional[ImageModules] = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the reward/agent code of an RLHFJobSpec, each naming its spec field:
    the inline code in ``spec``, and ``sources`` (snapshot file name, e.g. reward_func.py → source)
    for code read elsewhere (a ConfigMap, a local path)."""
    from .workerconfig import AGENT_FILE, REWARD_FILE

    roles = []
    if spec.reward is not None and spec.reward.function is not None:
        roles.append((REWARD_FILE, spec.reward.function, "spec.reward.function"))
    if spec.agent is not None:
        roles.append((AGENT_FILE, spec.agent, "spec.agent"))
    files, fields = {}, {}
    for name, source, field in roles:
        text = source.inline if source.inline is not None else sources.get(name)
        if text is not None:
            files[name] = text
            fields[name] = f"{field}.{source.kind()}"
    errors: list[str] = []
    warnings: list[str] = []
    for problem in unresolved_imports(files, siblings, modules):
        line = f"{fields[problem.file]}: {problem.message(spec.cluster.image)}"
        (warnings if spec.cluster.image and not problem.statement.level else errors).append(line)
    return errors, warnings


def local_sources(spec, job_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The code a job names by ``path`` or ``configMapRef`` as far as it is on this machine (for
    ``rlhf validate``): a path relative to the job file, a ConfigMap key as a file beside it, as
    ``rlhf run`` reads them; with the files beside each. Code that is not here (a path in the image)
    is left out: the preflight pod checks it."""
    from .workerconfig import AGENT_FILE, REWARD_FILE

    roles = []
    if spec.reward is not None and spec.reward.function is not None:
        roles.append((REWARD_FILE, spec.reward.function))
    if spec.agent is not None:
        roles.append((AGENT_FILE, spec.agent))
    sources: dict[str, str] = {}
    siblings: list[str] = []
    for name, source in roles:
        if source.path is not None:
            path = Path(source.path) if Path(source.path).is_absolute() else job_dir / source.path
        elif source.config_map_ref is not None:
            path = job_dir / (source.config_map_ref.key or name)
        else:
            continue
        try:
            sources[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        siblings += siblings_of(path)
    return sources, siblings


def siblings_of(path: Path) -> list[str]:
    """The files beside a code file on disk, as importable names (``rlhf validate`` and ``rlhf run``)."""
    try:
        return [p.name for p in path.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()]
    except OSError:
        return []


# --------------------------------------------------------------------------- generating the list


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_api.imports",
                                     description="Write the worker image's module list (run inside the image).")
    parser.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    parser.add_argument("--requirement", default=None,
                        help="only the distributions this requirement pulls in, e.g. 'rlhf-operator[cpu]' (for a"
                             " development virtualenv that holds more than the image)")
    parser.add_argument("--origin", default="inside the worker image", help="where the list comes from, for its header")
    args = parser.parse_args(argv)
    text = module_list_text(installed_modules(args.requirement), args.origin)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
