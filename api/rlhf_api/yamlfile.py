"""Reading YAML the way kubectl does, and refusing hostile input with one line.

kubectl (sigs.k8s.io/yaml, on go-yaml v2) differs from PyYAML's YAML 1.1 rules in ways a user
meets: ``1e-6`` and ``1.0e6`` are numbers (YAML 1.2 core float syntax), ``1:20`` and dates stay
strings, and a key given twice in one mapping is an error. This module also bounds what a file
can cost: its size, alias expansion (the "billion laughs"), nesting depth and binary content are
refused up front, so the reader answers in well under a second with bounded memory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

STDIN = "-"
STDIN_LABEL = "<stdin>"
MAX_BYTES = 16 * 1024 * 1024  # far above the API server's 3 MiB request limit, far below trouble
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add to a document once expanded
MAX_DEPTH = 200  # nesting levels; the CRD's own schema is a handful deep

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.2 core schema floats (also go-yaml's rule), with a dot or an exponent so that plain
# integers still resolve as ints; "_" separators as go-yaml accepts them.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*\.(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)
# go-yaml's integers: strconv.ParseInt(base 0) after dropping "_"; no base-60 ("1:20" is a string).
_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+
                      |[-+]?0o[0-7_]+
                      |[-+]?0[0-7_]+
                      |[-+]?(?:0|[1-9][0-9_]*)
                      |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_REPLACED = {"tag:yaml.org,2002:float", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp"}


class YAMLInputError(ValueError):
    """Input that is not a YAML stream we will read; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.line = line


class KubeLoader(_Base):  # type: ignore[misc, valid-type]
    """SafeLoader with kubectl's scalar rules and duplicate keys refused."""

    yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag not in _REPLACED]
        for first, resolvers in _Base.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden; only keys written twice are refused
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key; the base class refuses it with its own message
            if first is not None:
                raise YAMLInputError(f"duplicate key {key!r} (first at line {first}); keep one of them", line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


KubeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
KubeLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))


@dataclass
class Document:
    """One document of a stream: its data, 1-based index and first line, and where each field is."""

    data: Any
    index: int
    line: int
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, path: tuple) -> int:
        """The line of ``path`` (a tuple of keys and indexes), or of its nearest given parent."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, self.line)


NUL = bytes(1)
_stdin_cache: dict[str, bytes] = {}


def label(path: Path | str) -> str:
    """How messages name the input: the path, or <stdin> for "-"."""
    return STDIN_LABEL if str(path) == STDIN else str(path)


def read_bytes(path: Path | str) -> bytes:
    """The bytes of ``path``, or of standard input for "-" (read once, then remembered, so that a
    check and the run after it see the same job). Raises OSError, or YAMLInputError when too large."""
    if str(path) == STDIN:
        if STDIN not in _stdin_cache:
            _stdin_cache[STDIN] = sys.stdin.buffer.read(MAX_BYTES + 1)
        raw = _stdin_cache[STDIN]
    else:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise YAMLInputError(f"is larger than {MAX_BYTES // (1024 * 1024)} MiB; a Kubernetes object is at most 3 MiB")
    return raw


def decode(raw: bytes) -> str:
    """UTF-8 text (a BOM allowed); binary input is refused before the parser sees it."""
    if NUL in raw:
        raise YAMLInputError(f"is a binary file, not YAML (a NUL byte at offset {raw.index(NUL)})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise YAMLInputError(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start});"
                             " give a YAML file", line) from None


def _expanded_size(node, memo: dict[int, int], depth: int = 0) -> int:
    """Nodes the document has once every alias is expanded; counted on the shared graph, so a
    billion-laughs stream costs as much to measure as it is long."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if depth > MAX_DEPTH:
        raise YAMLInputError(f"nests deeper than {MAX_DEPTH} levels", node.start_mark.line + 1)
    memo[id(node)] = 1  # a cycle (a recursive alias) counts once here and is refused below
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, depth + 1) + _expanded_size(v, memo, depth + 1) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo, depth + 1) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def _record_lines(node, path: tuple, lines: dict[tuple, int], visited: set[int]) -> None:
    """Line of every field and list item, each shared (aliased) node walked once."""
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = path + (key_node.value,)
                lines.setdefault(child, key_node.start_mark.line + 1)
                _record_lines(value, child, lines, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            child = path + (index,)
            lines.setdefault(child, value.start_mark.line + 1)
            _record_lines(value, child, lines, visited)


def _is_cyclic(node, stack: set[int], done: set[int]) -> bool:
    if id(node) in done:
        return False
    if id(node) in stack:
        return True
    stack.add(id(node))
    children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    cyclic = any(_is_cyclic(c, stack, done) for c in children)
    stack.discard(id(node))
    done.add(id(node))
    return cyclic


def _check_node(node) -> None:
    distinct: dict[int, int] = {}
    added = _expanded_size(node, distinct) - len(distinct)  # what aliases add; a long file alone is fine
    if added > MAX_ALIAS_NODES:
        raise YAMLInputError(f"its aliases expand it by {added} nodes (at most {MAX_ALIAS_NODES}); "
                             "write the values out or use fewer aliases", node.start_mark.line + 1)
    if _is_cyclic(node, set(), set()):
        raise YAMLInputError("has an alias inside its own anchor; Kubernetes objects cannot be recursive",
                             node.start_mark.line + 1)


def _yaml_error(exc: yaml.YAMLError, text: str) -> YAMLInputError:
    """One line from PyYAML's multi-line report: the problem, its line, and the context's line."""
    if isinstance(exc, yaml.reader.ReaderError):
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return YAMLInputError(f"is not valid YAML: {exc.reason} (#x{character:04x}); remove it or quote it"
                              " as an escape", text[:exc.position].count("\n") + 1)
    if not isinstance(exc, yaml.MarkedYAMLError):
        return YAMLInputError(f"is not valid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "cannot be parsed"
    context = ""
    if exc.context and exc.problem and exc.context_mark is not None:
        at = "" if mark and exc.context_mark.line == mark.line else f" at line {exc.context_mark.line + 1}"
        context = f" ({exc.context.removeprefix('while ')}{at})"
    return YAMLInputError(f"is not valid YAML: {problem}{context}", mark.line + 1 if mark else None)


def parse_stream(text: str) -> list[Document]:
    """Every non-empty document of ``text``, checked and constructed with kubectl's rules."""
    loader = KubeLoader(text)
    documents: list[Document] = []
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
                continue
            _check_node(node)
            lines: dict[tuple, int] = {}
            _record_lines(node, (), lines, set())
            documents.append(Document(loader.construct_document(node), index, node.start_mark.line + 1, lines))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text) from None
    except RecursionError:
        raise YAMLInputError(f"nests too deeply (at most {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()
    return documents


def load_stream(path: Path | str) -> list[Document]:
    """Read ``path`` ("-": standard input) and parse every document. Raises OSError or YAMLInputError."""
    return parse_stream(decode(read_bytes(path)))
