"""Turning a YAML document into an RLHFJob, with errors that name the field and the fix."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from .names import API_VERSION, KIND
from .spec import RLHFJob, RLHFJobSpec

_PATH_PREFIX = re.compile(r"^(?:Value error, )?([A-Za-z\[][A-Za-z0-9_.\[\]]*): (.*)$", re.S)


def _path_parts(relative: str) -> tuple[Any, ...]:
    """'volumes[0].name' → ('volumes', 0, 'name')."""
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", relative))


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidJob(ValueError):
    """A spec that cannot run. ``errors`` holds one entry per problem."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _join(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


_PATTERN_HINTS = {
    "^https?://": "must be an http:// or https:// URL",
    "^/": "must be an absolute path (starting with /)",
}
_TYPE_HINTS = {
    "model_type": "must be a mapping of fields (a YAML object)",
    "dict_type": "must be a mapping (a YAML object)",
    "list_type": "must be a list",
    "int_type": "must be a whole number, unquoted",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number, unquoted",
    "bool_type": "must be true or false, unquoted",
    "string_type": "must be a string (quote it in YAML)",
}


def _hint(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field; check its spelling (fields are camelCase) or remove it"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern", "")
        return _PATTERN_HINTS.get(pattern, f"must match the pattern {pattern}") + f" (got {error.get('input')!r})"
    if kind in _TYPE_HINTS:
        return f"{_TYPE_HINTS[kind]} (got {error.get('input')!r})"
    return error["msg"].removeprefix("Value error, ")


def field_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[FieldError]:
    """Flatten a pydantic error into field paths in YAML spelling (spec.algorithm.nSamplesPerPrompt)."""
    errors: list[FieldError] = []
    for error in exc.errors():
        loc = prefix + tuple(error["loc"])
        # Unions (quantities) repeat the error per member; the member name is noise.
        loc = tuple(p for p in loc if p not in ("int", "float", "str", "function-after[_cpu(), union[int,float,str]]"))
        message = _hint(error)
        match = _PATH_PREFIX.match(message)
        if match and error["type"] == "value_error":
            loc = loc + _path_parts(match.group(1))
            message = match.group(2)
        errors.append(FieldError(_join(loc), message))
    # Keep order, drop exact repeats (union members).
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in errors:
        if (e.path, e.message) not in seen:
            seen.add((e.path, e.message))
            unique.append(e)
    return unique


def parse_job(document: Any) -> RLHFJob:
    """Validate one parsed YAML document as an RLHFJob; raise InvalidJob listing every problem."""
    if not isinstance(document, dict):
        raise InvalidJob([FieldError("(document)", "expected a YAML mapping with apiVersion, kind, metadata and spec")])
    errors: list[FieldError] = []
    if document.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION} (got {document.get('apiVersion')!r})"))
    if document.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND} (got {document.get('kind')!r})"))
    if errors:
        raise InvalidJob(errors)
    try:
        return RLHFJob.model_validate_json(_as_json(document), strict=True)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def _as_json(document: Any) -> str:
    # Strict JSON-mode validation types fields the way the API server does: "4" is not an
    # integer and "yes" is not a boolean, so `rlhf validate` accepts what the CRD accepts.
    return json.dumps(document, default=str)


def parse_spec(spec: Any) -> RLHFJobSpec:
    """Validate the spec part alone (the operator receives spec and metadata separately)."""
    try:
        return RLHFJobSpec.model_validate_json(_as_json(spec), strict=True)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc, ("spec",))) from None


def load_documents(path: Path | str) -> list[Any]:
    text = Path(path).read_text()
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidJob([FieldError(str(path), f"is not valid YAML: {exc}")]) from None


ANY_KEY = "*"  # the key of a source file given in place of a ConfigMap manifest


def load_configmap_file(file: str, job_dir: Path) -> dict[str, str]:
    """The data of a ConfigMap given locally (`--configmap NAME=FILE`, for `rlhf render` and
    `rlhf run`): FILE is a ConfigMap manifest, or a source file that stands for any key
    (returned under ANY_KEY). A relative FILE is tried as given, then beside the job file."""
    path = Path(file) if Path(file).is_absolute() or Path(file).exists() else job_dir / file
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        return {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
    return {ANY_KEY: text}


def load_job(path: Path | str, name: Optional[str] = None) -> RLHFJob:
    """Load the RLHFJob from a YAML file (the first one, or the one called ``name``)."""
    docs = [d for d in load_documents(path) if isinstance(d, dict) and d.get("kind") == KIND]
    if name is not None:
        docs = [d for d in docs if (d.get("metadata") or {}).get("name") == name]
    if not docs:
        all_docs = load_documents(path)
        if len(all_docs) == 1:
            return parse_job(all_docs[0])  # reports apiVersion/kind problems
        raise InvalidJob([FieldError(str(path), f"holds no {KIND}" + (f" named {name}" if name else ""))])
    return parse_job(docs[0])
