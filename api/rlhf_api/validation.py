"""Turning a YAML document into an RLHFJob, with errors that name the field and the fix."""

from __future__ import annotations

import difflib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ValidationError

from .names import API_VERSION, KIND
from .spec import RLHFJob, RLHFJobSpec
from .yamlfile import Document, YAMLInputError, load_stream, parse_stream

_PATH_PREFIX = re.compile(r"^(?:Value error, )?([A-Za-z\[][A-Za-z0-9_.\[\]]*): (.*)$", re.S)


def _path_parts(relative: str) -> tuple[Any, ...]:
    """'volumes[0].name' → ('volumes', 0, 'name')."""
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", relative))


@dataclass(frozen=True)
class FieldError:
    path: str  # empty for a problem of the file itself (not YAML, binary, duplicate key)
    message: str
    line: Optional[int] = None  # 1-based, when the spec was read from a file

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def located(self, source: str, document: str = "") -> str:
        """The line the CLI prints: ``FILE:LINE: [document] path: message``, the file named once."""
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {document + ': ' if document else ''}{self}"


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


_BOUND_HINTS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _shown(value: Any, limit: int = 60) -> str:
    """A value as an error quotes it: its repr, cut short so a pasted file does not fill the screen."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _closest(word: str, choices: Iterable[str]) -> Optional[str]:
    """The choice a typo most likely meant, compared without case, '_' or '-' (so the snake_case
    or lower-case spelling of a camelCase field finds it)."""
    folded = {re.sub(r"[-_]", "", c).lower(): c for c in choices}
    match = difflib.get_close_matches(re.sub(r"[-_]", "", word).lower(), list(folded), n=1, cutoff=0.6)
    return folded[match[0]] if match else None


def _model_of(annotation: Any) -> Optional[type[BaseModel]]:
    """The pydantic model inside Optional[...], list[...] or Annotated[...], if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, typing.get_origin(dict[str, Any])):
        return None
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _fields_at(root: Optional[type[BaseModel]], loc: tuple[Any, ...]) -> list[str]:
    """The YAML names of the fields of the object at ``loc`` (list indexes skipped)."""
    model = root
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        model = _model_of(field.annotation) if field is not None else None
    return [f.alias or n for n, f in model.model_fields.items()] if model is not None else []


def _unknown_field(error: dict[str, Any], root: Optional[type[BaseModel]]) -> str:
    loc = tuple(error["loc"])
    guess = _closest(str(loc[-1]), _fields_at(root, loc[:-1])) if loc else None
    if guess:
        return f"unknown field; check its spelling: did you mean {guess}?"
    return "unknown field; check its spelling (fields are camelCase) or remove it"


def _choice(error: dict[str, Any]) -> str:
    allowed = re.findall(r"'([^']*)'", (error.get("ctx") or {}).get("expected", ""))
    got = error.get("input")
    hint = f"must be one of {', '.join(allowed)} (got {_shown(got)})"
    guess = _closest(str(got), allowed) if isinstance(got, str) else None
    return hint + (f"; did you mean {guess}?" if guess else "")


def _size(error: dict[str, Any]) -> Optional[str]:
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in _BOUND_HINTS:
        return f"must be {_BOUND_HINTS[kind]} {ctx.get(_BOUND_KEYS[kind])} (got {_shown(got)})"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long (got {len(got) if isinstance(got, str) else '?'})"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s) (got {ctx.get('actual_length')})"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s) (got {ctx.get('actual_length')})"
    return None


def _hint(error: dict[str, Any], root: Optional[type[BaseModel]] = None) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_field(error, root)
    if kind in ("enum", "literal_error"):
        return _choice(error)
    if kind == "missing":
        return "required field is missing"
    sized = _size(error)
    if sized:
        return sized
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern", "")
        return _PATTERN_HINTS.get(pattern, f"must match the pattern {pattern}") + f" (got {_shown(error.get('input'))})"
    if kind in _TYPE_HINTS:
        return f"{_TYPE_HINTS[kind]} (got {_shown(error.get('input'))})"
    return error["msg"].removeprefix("Value error, ")


def field_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[FieldError]:
    """Flatten a pydantic error into field paths in YAML spelling (spec.algorithm.nSamplesPerPrompt)."""
    errors: list[FieldError] = []
    root = {model.__name__: model for model in (RLHFJob, RLHFJobSpec)}.get(exc.title)
    for error in exc.errors():
        # Unions (quantities) repeat the error per member; the member name is noise.
        error = {**error, "loc": tuple(p for p in error["loc"]
                                       if p not in ("int", "float", "str", "function-after[_cpu(), union[int,float,str]]"))}
        loc = prefix + error["loc"]
        message = _hint(error, root)
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
        return RLHFJob.model_validate_json(_as_json(document), strict=True, by_name=False)
    except ValidationError as exc:
        raise InvalidJob([_misspelt_section(e, document) for e in field_errors(exc)]) from None


def _misspelt_section(error: FieldError, document: dict) -> FieldError:
    """A missing metadata or spec next to a top-level key that looks like it: name that key (the
    object itself ignores unknown top-level keys, so nothing else would point at the typo)."""
    if error.path not in ("metadata", "spec") or error.message != "required field is missing":
        return error
    strays = [str(k) for k in document if k not in ("apiVersion", "kind", "metadata", "spec", "status")]
    typo = next((k for k in strays if _closest(k, [error.path])), None)
    if typo is None:
        return error
    return FieldError(typo, f"unknown field; check its spelling: did you mean {error.path}?")


def _as_json(document: Any) -> str:
    # Strict JSON-mode validation types fields the way the API server does: "4" is not an
    # integer and "yes" is not a boolean, so `rlhf validate` accepts what the CRD accepts.
    # by_name=False does the same for names: the CRD knows nSamplesPerPrompt, not the Python
    # n_samples_per_prompt, which the API server would drop or refuse.
    return json.dumps(document, default=str)


def parse_spec(spec: Any) -> RLHFJobSpec:
    """Validate the spec part alone (the operator receives spec and metadata separately)."""
    try:
        return RLHFJobSpec.model_validate_json(_as_json(spec), strict=True, by_name=False)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc, ("spec",))) from None


def load_documents(path: Path | str) -> list[Document]:
    """Every document of a YAML file ("-": standard input), read the way kubectl reads it.
    Raises OSError when unreadable, InvalidJob (one error with its line) when not YAML we take."""
    try:
        return load_stream(path)
    except YAMLInputError as exc:
        raise InvalidJob([FieldError("", exc.message, exc.line)]) from None


ANY_KEY = "*"  # the key of a source file given in place of a ConfigMap manifest


def load_configmap_file(file: str, job_dir: Path) -> dict[str, str]:
    """The data of a ConfigMap given locally (`--configmap NAME=FILE`, for `rlhf render` and
    `rlhf run`): FILE is a ConfigMap manifest, or a source file that stands for any key
    (returned under ANY_KEY). A relative FILE is tried as given, then beside the job file."""
    path = Path(file) if Path(file).is_absolute() or Path(file).exists() else job_dir / file
    text = path.read_text()
    try:
        documents = parse_stream(text)  # bounded: an alias bomb here must not expand in str()
    except YAMLInputError:
        documents = []
    doc = documents[0].data if len(documents) == 1 else None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        return {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
    return {ANY_KEY: text}


def _meant_as_job(data: Any) -> bool:
    """A document written as an RLHFJob, misspelt kind or version included, so that a typo is
    reported rather than skipped among the other objects of a stream."""
    if not isinstance(data, dict):
        return False
    kind, api_version = str(data.get("kind", "")), str(data.get("apiVersion", ""))
    return kind.lower() == KIND.lower() or api_version.split("/")[0] == API_VERSION.split("/")[0]


@dataclass
class LoadedJob:
    """One RLHFJob document of a file: the job when valid, else its errors with their lines."""

    document: Document
    job: Optional[RLHFJob]
    errors: list[FieldError]

    @property
    def name(self) -> str:
        metadata = self.document.data.get("metadata") if isinstance(self.document.data, dict) else None
        return str(metadata.get("name", "")) if isinstance(metadata, dict) else ""

    def label(self) -> str:
        """'document 2 (demo)': which one, for files with several."""
        return f"document {self.document.index}" + (f" ({self.name})" if self.name else "")


def _with_line(error: FieldError, document: Document) -> FieldError:
    line = document.line_of(_path_parts(error.path)) if error.path else document.line
    return FieldError(error.path, error.message, error.line or line)


def load_jobs(path: Path | str) -> list[LoadedJob]:
    """Every RLHFJob of a file, each validated on its own; other kinds of object (a kustomize
    build's ConfigMaps) are skipped. A file of one document is validated as an RLHFJob whatever
    its kind, so a wrong kind is reported. Raises InvalidJob when the file holds no RLHFJob."""
    documents = load_documents(path)
    candidates = [d for d in documents if _meant_as_job(d.data)]
    if not candidates and len(documents) == 1:
        candidates = documents
    if not candidates:
        found = f"{len(documents)} other document(s)" if documents else "it is empty"
        raise InvalidJob([FieldError("", f"holds no {KIND} ({found})")])
    loaded = []
    for document in candidates:
        try:
            loaded.append(LoadedJob(document, parse_job(document.data), []))
        except InvalidJob as exc:
            loaded.append(LoadedJob(document, None, [_with_line(e, document) for e in exc.errors]))
    return loaded


def load_job(path: Path | str, name: Optional[str] = None) -> RLHFJob:
    """The one RLHFJob of a file, or the one called ``name``; a file with several and no name
    is refused, naming them, rather than running whichever comes first."""
    loaded = load_jobs(path)
    if name is not None:
        loaded = [job for job in loaded if job.name == name]
        if not loaded:
            raise InvalidJob([FieldError("", f"holds no {KIND} named {name}")])
    if len(loaded) > 1:
        listed = ", ".join(f"{job.name or 'unnamed'} at line {job.document.line}" for job in loaded)
        raise InvalidJob([FieldError("", f"holds {len(loaded)} {KIND} documents ({listed}); this command takes"
                                         " one: put each in its own file")])
    if loaded[0].errors:
        raise InvalidJob(loaded[0].errors)
    return loaded[0].job
