"""What a sandboxed reward returns, carried as JSON: tensors and arrays become records with their
dtype and shape, and are rebuilt on the parent's side, so the contract checks see what the user
returned (a float64 tensor stays float64, an int list stays ints)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["to_plain", "from_plain", "NotPlain"]

_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
_MAX_DEPTH = 32


class NotPlain(TypeError):
    """A value that cannot leave the sandbox (not a number, string, list, dict, tensor or array)."""


def to_plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-able data; raises :class:`NotPlain` naming the first part that is not."""
    if depth > _MAX_DEPTH:
        raise NotPlain(f"nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, dict):
        return {"__dict__": [[to_plain(k, depth + 1), to_plain(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value]
    module = type(value).__module__.split(".")[0]
    if module in ("torch", "numpy") and hasattr(value, "tolist") and hasattr(value, "shape"):
        dtype = str(value.dtype).replace("torch.", "")
        if dtype not in _DTYPES:
            raise NotPlain(f"a {module} value of dtype {dtype}")
        flat = value.reshape(-1).tolist()
        data = [x if not isinstance(x, float) or math.isfinite(x) else repr(x) for x in flat]
        return {"__array__": module, "dtype": dtype, "shape": list(value.shape), "data": data}
    if module == "numpy" and hasattr(value, "item"):  # numpy scalar
        return to_plain(value.item(), depth)
    raise NotPlain(f"a {type(value).__module__}.{type(value).__qualname__}")


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain` (tensors rebuilt with torch, arrays with numpy)."""
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__dict__" in value:
        return {from_plain(k): from_plain(v) for k, v in value["__dict__"]}
    if "__array__" in value:
        return _array(value)
    raise ValueError(f"unexpected record {sorted(value)[:5]}")


def _array(record: dict) -> Any:
    dtype = str(record["dtype"])
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not allowed")
    data = [float(x) if isinstance(x, str) else x for x in record["data"]]
    shape = [int(s) for s in record["shape"]]
    if record["__array__"] == "torch":
        import torch

        return torch.tensor(data, dtype=getattr(torch, dtype)).reshape(shape)
    import numpy

    return numpy.asarray(data, dtype=dtype).reshape(shape)
