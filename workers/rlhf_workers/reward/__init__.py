"""User reward code under OpenRLHF's contract, validated with messages that say what is wrong.

The contract (OpenRLHF ``--remote_rm_url ./reward_func.py``)::

    def reward_func(queries, prompts, labels):
        # queries: list[str]  prompt + generated response (decoded, special tokens kept)
        # prompts: list[str]  the prompt only
        # labels:  list       ground truth from --label_key ("" when no label key)
        return {
            "rewards": ...,      # required: one float per query, used for advantages
            "scores": ...,       # optional: one float per query in [0, 1], for dynamic
                                 #           filtering; defaults to rewards
            "extra_logs": {...}, # optional: name -> value, logged to W&B/TensorBoard
        }

A remote reward server speaks the same contract over HTTP (OpenRLHF ``remote_rm_utils``):
``POST {"query": [...], "prompts": [...], "labels": [...]}`` answered by a JSON object
with the same three keys.

Everything that can go wrong is raised as a :class:`RewardError` subclass (a *reward
fault*), never silently turned into a low reward:

* :class:`RewardLoadError` - the file cannot be loaded or lacks a usable ``reward_func``;
* :class:`RewardFunctionError` - ``reward_func`` raised; carries the user traceback;
* :class:`RewardContractError` - the returned value breaks the contract;
* :class:`RemoteRewardError` - the reward server could not be reached or answered badly.

``RewardError.sample_index`` is the offending sample when one is known.

Executors share one interface, :class:`RewardExecutor` (``score(queries, prompts, labels)
-> RewardResult``), so a sandboxed or parallel executor can be dropped in later:
:class:`LocalFunctionReward`, :class:`RemoteReward`, :class:`RewardModelReward`.
"""

from __future__ import annotations

import abc
import hashlib
import http.client
import importlib.util
import inspect
import json
import logging
import math
import numbers
import os
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "RewardError",
    "RewardLoadError",
    "RewardFunctionError",
    "RewardContractError",
    "RemoteRewardError",
    "RewardResult",
    "load_reward_function",
    "call_reward_function",
    "validate_reward_output",
    "RewardExecutor",
    "LocalFunctionReward",
    "RemoteReward",
    "RewardModelReward",
]

RewardFn = Callable[[list, list, list], Any]

#: Keys of the returned dict that OpenRLHF reads.
KNOWN_KEYS = ("rewards", "scores", "extra_logs")
_PROMPT_PREVIEW = 80
_BODY_PREVIEW = 300


# --------------------------------------------------------------------------- errors


class RewardError(Exception):
    """A reward fault (as opposed to a legitimately low reward).

    Attributes:
        sample_index: index in the batch of the offending sample, when known.
        source: the reward file / URL / model the error came from, when known.
    """

    def __init__(self, message: str, *, sample_index: Optional[int] = None, source: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.sample_index = sample_index
        self.source = source


class RewardLoadError(RewardError):
    """The reward file could not be loaded, or ``reward_func`` is missing or has the wrong signature."""


class RewardContractError(RewardError):
    """``reward_func`` (or a reward server) returned something that breaks the contract."""


class RewardFunctionError(RewardError):
    """``reward_func`` raised an exception.

    Attributes:
        batch_size: number of samples in the failing call.
        exc_type: name of the original exception type.
        exc_message: ``str()`` of the original exception.
        user_traceback: formatted traceback of the user's code (our frames removed).
        original: the original exception (also chained as ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        batch_size: int,
        original: BaseException,
        user_traceback: str,
        sample_index: Optional[int] = None,
        source: Optional[str] = None,
    ):
        super().__init__(message, sample_index=sample_index, source=source)
        self.batch_size = batch_size
        self.original = original
        self.exc_type = type(original).__name__
        self.exc_message = str(original)
        self.user_traceback = user_traceback


class RemoteRewardError(RewardError):
    """A reward server could not be reached, or answered with an error status / non-JSON body."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: Optional[int] = None,
        body: Optional[str] = None,
        attempts: int = 1,
    ):
        super().__init__(message, source=url)
        self.url = url
        self.status = status
        self.body = body
        self.attempts = attempts


# --------------------------------------------------------------------------- result


@dataclass
class RewardResult:
    """Validated output of one reward call over ``N`` samples.

    Attributes:
        rewards: float32 tensor ``[N]`` - used for advantages.
        scores: tensor ``[N]`` - used for dynamic filtering; ``rewards`` when not given. In the
            precision the reward returned them (float64 for Python floats), so a group mean that
            lands on a filter bound is judged as the user wrote it.
        extra_logs: name -> float; tensors/arrays/lists reduced by mean, bools/ints cast.
        extra_logs_per_sample: name -> float tensor ``[N]`` for extra_logs values that had
            exactly one entry per sample (kept for per-sample display).
        scores_given: whether the function returned ``scores`` itself.
        warnings: contract-conforming oddities worth showing (dtype casts, unknown keys,
            scores outside [0, 1], ...).
    """

    rewards: torch.Tensor
    scores: torch.Tensor
    extra_logs: dict[str, float] = field(default_factory=dict)
    extra_logs_per_sample: dict[str, torch.Tensor] = field(default_factory=dict)
    scores_given: bool = False
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.rewards.numel())

    def to_openrlhf(self) -> dict[str, Any]:
        """The dict OpenRLHF's reward plumbing consumes (per-sample extra logs where available)."""
        logs: dict[str, torch.Tensor] = {}
        n = len(self)
        for key, value in self.extra_logs.items():
            logs[key] = self.extra_logs_per_sample.get(key, torch.full((n,), value, dtype=torch.float32))
        return {"rewards": self.rewards, "scores": self.scores, "extra_logs": logs}

    @staticmethod
    def concat(parts: Sequence["RewardResult"]) -> "RewardResult":
        """Join results of consecutive chunks of one batch (scalar logs: size-weighted mean)."""
        if not parts:
            raise ValueError("no reward results to concatenate")
        if len(parts) == 1:
            return parts[0]
        sizes = [len(p) for p in parts]
        logs: dict[str, float] = {}
        for key in dict.fromkeys(k for p in parts for k in p.extra_logs):
            pairs = [(p.extra_logs[key], s) for p, s in zip(parts, sizes) if key in p.extra_logs]
            weight = sum(s for _, s in pairs)
            logs[key] = sum(v * s for v, s in pairs) / weight if weight else float("nan")
        per_sample = {
            key: torch.cat([p.extra_logs_per_sample[key] for p in parts])
            for key in parts[0].extra_logs_per_sample
            if all(key in p.extra_logs_per_sample for p in parts)
        }
        warnings = list(dict.fromkeys(w for p in parts for w in p.warnings))
        return RewardResult(
            rewards=torch.cat([p.rewards for p in parts]),
            scores=torch.cat([p.scores for p in parts]),
            extra_logs=logs,
            extra_logs_per_sample=per_sample,
            scores_given=all(p.scores_given for p in parts),
            warnings=warnings,
        )


# --------------------------------------------------------------------------- loading


_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple, RewardFn] = {}


def _looks_like_path(source: Union[str, os.PathLike]) -> bool:
    if isinstance(source, os.PathLike):
        return True
    if "\n" in source:
        return False
    return source.endswith(".py") or os.path.exists(source)


def _check_signature(fn: Any, where: str) -> None:
    fix = (
        "Define it as `def reward_func(queries, prompts, labels):` taking three positional "
        "arguments (lists of equal length) and returning {\"rewards\": ...}."
    )
    if not callable(fn):
        raise RewardLoadError(f"{where}: `reward_func` is a {type(fn).__name__}, not a function. {fix}", source=where)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins / C callables: cannot check, trust the user
        return
    try:
        sig.bind([], [], [])
    except TypeError as exc:
        raise RewardLoadError(
            f"{where}: `reward_func{sig}` cannot be called as reward_func(queries, prompts, labels) ({exc}). {fix}",
            source=where,
        ) from None


def load_reward_function(
    source: Union[str, os.PathLike],
    module_name: str = "reward_func",
    *,
    reload: bool = False,
) -> RewardFn:
    """Load ``reward_func`` from a ``reward_func.py`` path or from inline Python source.

    ``source`` is treated as a path when it is a ``PathLike``, or a one-line string that
    ends in ``.py`` or names an existing file; otherwise it is module source code.

    The module body (e.g. a ``transformers.pipeline(...)`` at top level) runs once: the
    function is cached per file (path, size and mtime) or per source text, and later
    calls return the same callable unless ``reload=True``.

    The module is executed like OpenRLHF does (``importlib`` from the file location,
    named ``module_name``); it is registered in ``sys.modules`` only while its body runs
    (so dataclasses and ``pickle`` inside it work) and removed afterwards, which keeps
    the function picklable *by value* for Ray, as in OpenRLHF.

    Raises:
        RewardLoadError: the file is missing, fails to import (the message carries the
            traceback), lacks ``reward_func``, or ``reward_func`` does not take three
            positional arguments.
    """
    if _looks_like_path(source):
        path = Path(source).expanduser().resolve()
        where = str(path)
        if not path.is_file():
            raise RewardLoadError(f"reward file {where} does not exist (or is not a file)", source=where)
        st = path.stat()
        key: tuple = ("file", where, st.st_size, st.st_mtime_ns, module_name)
        code = path.read_text(encoding="utf-8")
    else:
        code = str(source)
        digest = hashlib.sha256(code.encode()).hexdigest()[:16]
        where = f"<inline reward source {digest}>"
        key = ("source", digest, module_name)
        path = None

    with _LOAD_LOCK:
        if not reload and key in _LOADED:
            return _LOADED[key]
        module = _exec_module(code, path, where, module_name)
        if not hasattr(module, "reward_func"):
            public = sorted(n for n, v in vars(module).items()
                            if inspect.isfunction(v) and v.__module__ == module_name and not n.startswith("_"))
            hint = f" It defines: {', '.join(public)}." if public else ""
            raise RewardLoadError(
                f"{where} does not define `reward_func`.{hint} Add "
                "`def reward_func(queries, prompts, labels):` returning {\"rewards\": ...} "
                "(OpenRLHF looks up exactly this name).",
                source=where,
            )
        fn = module.reward_func
        _check_signature(fn, where)
        _LOADED[key] = fn
        return fn


def _exec_module(code: str, path: Optional[Path], where: str, module_name: str) -> ModuleType:
    if path is not None:
        spec = importlib.util.spec_from_file_location(module_name, str(path))
        if spec is None or spec.loader is None:
            raise RewardLoadError(f"cannot import {where} as a Python module", source=where)
        module = importlib.util.module_from_spec(spec)
    else:
        module = ModuleType(module_name)
        module.__file__ = where
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        if path is not None:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            exec(compile(code, where, "exec"), module.__dict__)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported with its traceback
        tb = _user_traceback(exc)
        raise RewardLoadError(
            f"{where} failed while loading (module-level code raised {type(exc).__name__}: {exc}).\n{tb}",
            source=where,
        ) from exc
    finally:
        if previous is not None:
            sys.modules[module_name] = previous
        else:
            sys.modules.pop(module_name, None)
    return module


def _user_traceback(exc: BaseException) -> str:
    """Format ``exc``'s traceback without the frames of this module."""
    tb = exc.__traceback__
    this_file = os.path.normcase(os.path.abspath(__file__))
    while tb is not None and os.path.normcase(os.path.abspath(tb.tb_frame.f_code.co_filename)) == this_file:
        tb = tb.tb_next
    # Drop importlib's internal frames before the user's module too.
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith("<frozen importlib"):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


# --------------------------------------------------------------------------- validation


def _preview(text: Any, limit: int = _PROMPT_PREVIEW) -> str:
    s = str(text).replace("\n", "\\n")
    return repr(s if len(s) <= limit else s[: limit - 3] + "...")


def _sample_hint(index: int, prompts: Optional[Sequence[Any]]) -> str:
    if prompts is not None and 0 <= index < len(prompts):
        return f" (sample {index}, prompt {_preview(prompts[index])})"
    return f" (sample {index})"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a torch.Tensor of shape {list(value.shape)} and dtype {value.dtype}"
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return f"a numpy array of shape {list(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__} ({_preview(value, 40)})"


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) or (
        type(x).__module__ == "numpy" and getattr(x, "shape", None) == () and getattr(x, "dtype", None) is not None
        and x.dtype.kind in "biuf"
    ) or (isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_complex())


def _to_vector(
    value: Any,
    name: str,
    n: int,
    prompts: Optional[Sequence[Any]],
    where: str,
    warnings: list[str],
) -> torch.Tensor:
    """Convert ``value`` to a finite tensor of shape ``[n]`` or raise RewardContractError.

    Floating values keep their precision (Python floats: float64), so that dynamic filtering
    decides on scores as the reward returned them; integers and bools become float32.
    """
    fix = f"return one float per query, e.g. torch.tensor([...], dtype=torch.float32) of length {n}"
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
            raise RewardContractError(f"{where}: `{name}` has dtype {tensor.dtype}, not a real number type; {fix}",
                                      source=where)
        if not tensor.is_floating_point():
            warnings.append(f"`{name}` has dtype {tensor.dtype}; it is cast to float32")
    elif type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape"):
        if value.dtype.kind == "O":
            return _to_vector(value.tolist(), name, n, prompts, where, warnings)
        if value.dtype.kind not in "biuf":
            raise RewardContractError(
                f"{where}: `{name}` is a numpy array of dtype {value.dtype}, not numbers; {fix}", source=where)
        if value.dtype.kind != "f":
            warnings.append(f"`{name}` has dtype {value.dtype}; it is cast to float32")
        tensor = torch.from_numpy(value.astype("float64", copy=False).copy())
    elif isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or (isinstance(item, torch.Tensor) and item.dtype == torch.bool):
                items.append(float(item))
            elif _is_number(item):
                items.append(float(item.item() if hasattr(item, "item") else item))
            elif isinstance(item, (list, tuple)) or (isinstance(item, torch.Tensor) and item.dim() > 0):
                raise RewardContractError(
                    f"{where}: `{name}` must be 1-D (one float per query), but `{name}[{i}]` is "
                    f"{_describe(item)}; flatten it{_sample_hint(i, prompts)}",
                    sample_index=i, source=where)
            else:
                raise RewardContractError(
                    f"{where}: `{name}[{i}]` is {_describe(item)}, not a number{_sample_hint(i, prompts)}; {fix}",
                    sample_index=i, source=where)
        tensor = torch.tensor(items, dtype=torch.float64) if items else torch.zeros(0, dtype=torch.float64)
    elif _is_number(value):
        raise RewardContractError(
            f"{where}: `{name}` is a single number ({value!r}), but the batch has {n} queries; {fix}", source=where)
    else:
        raise RewardContractError(f"{where}: `{name}` is {_describe(value)}, not a list/tensor of floats; {fix}",
                                  source=where)

    if tensor.dim() != 1:
        if tensor.dim() == 0:
            raise RewardContractError(
                f"{where}: `{name}` is a 0-d (scalar) tensor, but the batch has {n} queries; {fix}", source=where)
        hint = " (use .view(-1) or .squeeze(-1))" if tensor.numel() == n else ""
        raise RewardContractError(
            f"{where}: `{name}` has shape {list(tensor.shape)}; expected a 1-D tensor of shape [{n}]{hint}",
            source=where)
    if tensor.numel() != n:
        raise RewardContractError(
            f"{where}: `{name}` has length {tensor.numel()} but the batch has {n} queries "
            f"(expected exactly one value per query, in order)", source=where)
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        what = "NaN" if math.isnan(float(tensor[bad])) else ("+inf" if float(tensor[bad]) > 0 else "-inf")
        count = int((~finite).sum())
        more = f"; {count} non-finite values in total" if count > 1 else ""
        raise RewardContractError(
            f"{where}: `{name}[{bad}]` is {what}{_sample_hint(bad, prompts)}{more}. "
            f"Rewards must be finite: catch the failing case and return a finite value instead",
            sample_index=bad, source=where)
    return tensor.to(device="cpu", dtype=tensor.dtype if tensor.is_floating_point() else torch.float32)


_INT_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}


def _reduce_log(key: str, value: Any, n: int, where: str) -> tuple[float, Optional[torch.Tensor]]:
    """extra_logs value -> (scalar, per-sample tensor or None)."""
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, numbers.Real):
        return float(value), None
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        if value.dtype.kind not in "biuf":
            raise RewardContractError(
                f"{where}: `extra_logs[{key!r}]` is a numpy array of dtype {value.dtype}; log numbers only",
                source=where)
        tensor = torch.as_tensor(value.astype("float64"))
    elif isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
        tensor = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise RewardContractError(
            f"{where}: `extra_logs[{key!r}]` is {_describe(value)}; extra_logs values must be numbers, "
            "bools or numeric tensors", source=where)
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
        raise RewardContractError(f"{where}: `extra_logs[{key!r}]` has dtype {tensor.dtype}; log numbers only",
                                  source=where)
    if tensor.numel() == 0:
        raise RewardContractError(f"{where}: `extra_logs[{key!r}]` is empty; its mean is undefined", source=where)
    tensor = tensor.to(torch.float64)
    per_sample = tensor.to(torch.float32) if tensor.dim() == 1 and tensor.numel() == n else None
    return float(tensor.mean()), per_sample


def validate_reward_output(
    output: Any,
    n: int,
    prompts: Optional[Sequence[Any]] = None,
    *,
    source: str = "reward_func",
) -> RewardResult:
    """Check ``output`` against the contract for a batch of ``n`` queries; return a :class:`RewardResult`.

    Raises:
        RewardContractError: naming what is wrong (and the sample, when it is one sample).
    """
    where = source
    if not isinstance(output, Mapping):
        if isinstance(output, torch.Tensor) or (type(output).__module__ == "numpy" and hasattr(output, "shape")) \
                or isinstance(output, (list, tuple)) or _is_number(output):
            raise RewardContractError(
                f"{where} returned {_describe(output)} instead of a dict. Return "
                "{\"rewards\": <tensor of one float per query>} (optionally with \"scores\" and \"extra_logs\"). "
                "OpenRLHF does not accept a bare tensor: it would fail later with an unrelated error.",
                source=where)
        raise RewardContractError(
            f"{where} returned {_describe(output)}; it must return a dict with a \"rewards\" key", source=where)

    keys = list(output.keys())
    if "rewards" not in output:
        hint = ""
        for near in ("reward", "Rewards", "rewards ", "score", "scores"):
            if near in output:
                hint = f" (it has {near!r}; the key must be exactly \"rewards\")"
                break
        raise RewardContractError(
            f"{where} returned a dict without the required key \"rewards\"{hint}; keys: {keys}", source=where)

    warnings: list[str] = []
    unknown = [k for k in keys if k not in KNOWN_KEYS]
    if unknown:
        warnings.append(f"keys {unknown} are ignored (OpenRLHF reads only {list(KNOWN_KEYS)})")

    exact = _to_vector(output["rewards"], "rewards", n, prompts, where, warnings)
    rewards = exact.to(torch.float32)
    scores_given = output.get("scores") is not None
    if scores_given:
        scores = _to_vector(output["scores"], "scores", n, prompts, where, warnings)
        outside = ((scores < 0) | (scores > 1)).nonzero()
        if outside.numel():
            i = int(outside[0])
            warnings.append(
                f"`scores[{i}]` = {float(scores[i]):g} is outside [0, 1]{_sample_hint(i, prompts)}; "
                "dynamic filtering compares the group mean of scores with a range in [0, 1]")
    else:
        scores = exact.clone()

    logs_in = output.get("extra_logs")
    extra_logs: dict[str, float] = {}
    per_sample: dict[str, torch.Tensor] = {}
    if logs_in is not None:
        if not isinstance(logs_in, Mapping):
            raise RewardContractError(
                f"{where}: `extra_logs` is {_describe(logs_in)}; it must be a dict of name -> number/tensor",
                source=where)
        for key, value in logs_in.items():
            if not isinstance(key, str):
                raise RewardContractError(f"{where}: `extra_logs` key {key!r} is not a string", source=where)
            scalar, vector = _reduce_log(key, value, n, where)
            if not math.isfinite(scalar):
                warnings.append(f"`extra_logs[{key!r}]` is {scalar} (non-finite)")
            extra_logs[key] = scalar
            if vector is not None:
                per_sample[key] = vector
    return RewardResult(
        rewards=rewards,
        scores=scores,
        extra_logs=extra_logs,
        extra_logs_per_sample=per_sample,
        scores_given=scores_given,
        warnings=warnings,
    )


def _check_inputs(queries: Sequence[Any], prompts: Sequence[Any], labels: Optional[Sequence[Any]]) -> list:
    if isinstance(queries, str) or isinstance(prompts, str):
        raise TypeError("queries and prompts must be lists of strings, not a single string")
    n = len(queries)
    if labels is None:
        labels = [""] * n
    if isinstance(labels, str):
        raise TypeError("labels must be a list (one label per query), not a single string")
    if not (len(prompts) == n == len(labels)):
        raise ValueError(f"queries, prompts and labels must have equal lengths, got {n}, {len(prompts)}, {len(labels)}")
    return list(labels)


def call_reward_function(
    fn: RewardFn,
    queries: Sequence[str],
    prompts: Sequence[str],
    labels: Optional[Sequence[Any]] = None,
    *,
    source: Optional[str] = None,
) -> RewardResult:
    """Call ``fn(queries, prompts, labels)`` and validate what it returns.

    ``labels=None`` passes ``""`` per sample, like OpenRLHF without ``--label_key``.

    Raises:
        RewardFunctionError: ``fn`` raised (message: batch size, exception type and
            message, and the user's traceback).
        RewardContractError: the return value breaks the contract.
    """
    labels = _check_inputs(queries, prompts, labels)
    where = source or f"reward function {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)!s}"
    n = len(queries)
    try:
        output = fn(list(queries), list(prompts), labels)
    except Exception as exc:  # noqa: BLE001 - wrapped with full detail
        tb = _user_traceback(exc)
        raise RewardFunctionError(
            f"{where} raised {type(exc).__name__}: {exc} (batch of {n} samples).\n"
            f"A reward function should return a (low) reward for bad outputs, not raise.\n{tb}",
            batch_size=n,
            original=exc,
            user_traceback=tb,
            source=where,
        ) from exc
    return validate_reward_output(output, n, prompts, source=where)


# --------------------------------------------------------------------------- executors


class RewardExecutor(abc.ABC):
    """Something that scores a batch: ``score(queries, prompts, labels) -> RewardResult``.

    Seam for future sandboxed / process-pool executors. Implementations must raise
    :class:`RewardError` subclasses for reward faults.
    """

    @abc.abstractmethod
    def score(self, queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None
              ) -> RewardResult:
        ...

    def close(self) -> None:
        """Release resources (no-op by default)."""

    def __enter__(self) -> "RewardExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalFunctionReward(RewardExecutor):
    """Runs a user ``reward_func`` in this process.

    Args:
        source: a path to ``reward_func.py``, inline source, or the function itself.
        module_name: module name used when loading from a file/source.
    """

    def __init__(self, source: Union[str, os.PathLike, RewardFn], module_name: str = "reward_func"):
        if callable(source) and not isinstance(source, (str, os.PathLike)):
            _check_signature(source, getattr(source, "__qualname__", "reward_func"))
            self.fn: RewardFn = source
            self.where = f"reward function {getattr(source, '__qualname__', source)}"
        else:
            self.fn = load_reward_function(source, module_name)
            self.where = str(source) if _looks_like_path(source) else "inline reward_func"

    def score(self, queries, prompts, labels=None) -> RewardResult:
        return call_reward_function(self.fn, queries, prompts, labels, source=self.where)


class RemoteReward(RewardExecutor):
    """An HTTP reward server speaking OpenRLHF's remote RM contract.

    Request: ``POST url`` with JSON ``{"query": [...], "prompts": [...], "labels": [...]}``.
    Response: a JSON object ``{"rewards": [...], "scores"?: [...], "extra_logs"?: {...}}``,
    validated like a local ``reward_func`` result (a bare JSON list is rejected).

    Args:
        url: the endpoint.
        token: sent as ``Authorization: Bearer <token>`` when given.
        timeout_s: per-request timeout.
        retries: extra attempts after the first on connection errors, timeouts, HTTP 5xx
            and 429 (other 4xx, bad JSON and contract violations are not retried).
        batch_size: split a batch into requests of at most this many samples.
        backoff_s, max_backoff_s: exponential backoff ``backoff_s * 2**attempt`` capped at
            ``max_backoff_s``; a numeric ``Retry-After`` header on 429/503 is honoured (capped).
    """

    RETRY_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout_s: float = 180.0,
        retries: int = 4,
        batch_size: Optional[int] = None,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward URL must start with http:// or https://, got {url!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.batch_size = batch_size
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep

    def score(self, queries, prompts, labels=None) -> RewardResult:
        labels = _check_inputs(queries, prompts, labels)
        n = len(queries)
        step = self.batch_size or max(n, 1)
        parts = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            parts.append(self._score_chunk(list(queries[start:stop]), list(prompts[start:stop]), labels[start:stop],
                                           offset=start))
        if not parts:  # nothing to score: no request
            return RewardResult(rewards=torch.zeros(0), scores=torch.zeros(0))
        return RewardResult.concat(parts)

    def _score_chunk(self, queries: list, prompts: list, labels: list, offset: int) -> RewardResult:
        body = self._post({"query": queries, "prompts": prompts, "labels": labels})
        try:
            return validate_reward_output(body, len(queries), prompts, source=f"reward server {self.url}")
        except RewardContractError as exc:
            if offset and exc.sample_index is not None:
                exc.sample_index += offset
            raise

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        delay = self.backoff_s * (2 ** attempt)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.max_backoff_s)

    def _post(self, payload: dict) -> Any:
        data = json.dumps(payload).encode("utf-8")
        attempts = self.retries + 1
        last = ""
        last_status: Optional[int] = None
        last_body: Optional[str] = None
        for attempt in range(attempts):
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                    status = response.status
            except urllib.error.HTTPError as exc:
                body = _read_body(exc)
                last_status, last_body = exc.code, body
                last = f"HTTP {exc.code} {exc.reason}: {_snip(body)}"
                if exc.code not in self.RETRY_STATUSES:
                    hint = " (check the token)" if exc.code in (401, 403) else ""
                    raise RemoteRewardError(
                        f"reward server {self.url} answered {last}{hint}",
                        url=self.url, status=exc.code, body=body, attempts=attempt + 1) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):  # socket.timeout included
                    last = f"timed out after {self.timeout_s:g}s"
                else:
                    last = f"connection failed: {reason}"
                last_status, last_body = None, None
            else:
                text = raw.decode("utf-8", errors="replace")
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise RemoteRewardError(
                        f"reward server {self.url} answered HTTP {status} with a body that is not JSON "
                        f"({exc.msg} at position {exc.pos}): {_snip(text)}",
                        url=self.url, status=status, body=text, attempts=attempt + 1) from None
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                logger.warning("reward server %s: %s; retry %d/%d in %.2fs", self.url, last, attempt + 1,
                               self.retries, delay)
                self._sleep(delay)
        raise RemoteRewardError(
            f"reward server {self.url} failed after {attempts} attempt(s); last error: {last}",
            url=self.url, status=last_status, body=last_body, attempts=attempts)


def _read_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001
        return ""


def _snip(text: str, limit: int = _BODY_PREVIEW) -> str:
    text = text.strip().replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "...")


class RewardModelReward(RewardExecutor):
    """Scores full query texts with a local Hugging Face sequence-classification model.

    Loads ``AutoTokenizer`` + ``AutoModelForSequenceClassification`` from a local
    directory (``local_files_only=True``; no hub access) once, in eval mode.

    Reward head:
        * ``num_labels == 1`` (a reward model's value head, as OpenRLHF's RMs):
          ``reward = logit``; ``score = sigmoid(logit)`` so it lies in [0, 1] for dynamic
          filtering (the Bradley-Terry preference probability against a 0-logit baseline).
        * ``num_labels >= 2`` (a classifier): ``reward = score = softmax(logits)[positive_label]``,
          the probability of the positive class, like the seed's ``pipeline`` example.

    With ``normalize=True`` the single-logit reward becomes ``(logit - mean) / std`` using
    ``config.mean`` / ``config.std`` stored with the model, as OpenRLHF's
    ``--normalize_reward`` does for its reward models.

    Args:
        path: local model directory.
        batch_size: texts per forward pass.
        max_length: truncation length (default: the tokenizer's, capped at 4096).
        device: torch device.
        positive_label: class index used for multi-label classifiers.
        normalize: apply the stored reward mean/std (single-logit models only).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        batch_size: int = 8,
        max_length: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        positive_label: int = 1,
        normalize: bool = False,
        dtype: Optional[torch.dtype] = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        if not Path(self.path).is_dir():
            raise RewardLoadError(f"reward model directory {self.path} does not exist", source=self.path)
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            kwargs = {"local_files_only": True}
            if dtype is not None:
                kwargs["dtype"] = dtype
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise RewardLoadError(
                f"cannot load a sequence-classification reward model from {self.path}: {type(exc).__name__}: {exc}",
                source=self.path) from exc
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise RewardLoadError(f"tokenizer in {self.path} has neither a pad nor an eos token", source=self.path)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        limit = getattr(self.tokenizer, "model_max_length", None) or 4096
        self.max_length = max_length or min(int(limit), 4096)
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels >= 2 and not 0 <= positive_label < self.num_labels:
            raise ValueError(f"positive_label {positive_label} out of range for {self.num_labels} labels")
        self.positive_label = positive_label
        self.norm: Optional[tuple[float, float]] = None
        if normalize:
            mean = getattr(self.model.config, "mean", None)
            std = getattr(self.model.config, "std", None)
            if self.num_labels != 1 or mean is None or not std:
                raise RewardLoadError(
                    f"normalize=True needs a single-logit reward model with `mean` and `std` in its config.json "
                    f"({self.path}: num_labels={self.num_labels}, mean={mean}, std={std})", source=self.path)
            self.norm = (float(mean), float(std))

    @torch.no_grad()
    def score(self, queries, prompts, labels=None) -> RewardResult:
        _check_inputs(queries, prompts, labels)
        rewards, scores = [], []
        for start in range(0, len(queries), self.batch_size):
            texts = [str(q) for q in queries[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                                           "token_type_ids")}
            logits = self.model(**enc).logits.float()
            if self.num_labels == 1:
                r = logits[:, 0]
                s = torch.sigmoid(r)
                if self.norm is not None:
                    r = (r - self.norm[0]) / self.norm[1]
            else:
                r = torch.softmax(logits, dim=-1)[:, self.positive_label]
                s = r
            rewards.append(r.cpu())
            scores.append(s.cpu())
        out = {
            "rewards": torch.cat(rewards) if rewards else torch.zeros(0),
            "scores": torch.cat(scores) if scores else torch.zeros(0),
        }
        return validate_reward_output(out, len(queries), prompts, source=f"reward model {self.path}")
