"""The reward contract as checked at run time: the inputs (``queries``, ``prompts``, ``labels`` of
equal length) and the value ``reward_func`` or a reward server returns
(``{"rewards": ..., "scores"?: ..., "extra_logs"?: ...}``), with messages that name what is wrong
and, when it is one sample, which sample and prompt."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional, Sequence

import torch

from .errors import RewardContractError
from .result import RewardResult

__all__ = ["KNOWN_KEYS", "validate_reward_output", "check_inputs"]

#: Keys of the returned dict that OpenRLHF reads.
KNOWN_KEYS = ("rewards", "scores", "extra_logs")
_PROMPT_PREVIEW = 80


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


def check_inputs(queries: Sequence[Any], prompts: Sequence[Any], labels: Optional[Sequence[Any]]) -> list:
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

