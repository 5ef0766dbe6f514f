"""The function executor: a user ``reward_func`` called in this process, its exceptions wrapped
with the user's traceback and its return value validated against the contract."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from .contract import check_inputs, validate_reward_output
from .errors import RewardFunctionError
from .loader import RewardFn, check_signature, load_reward_function, looks_like_path, user_traceback
from .result import RewardExecutor, RewardResult

__all__ = ["call_reward_function", "LocalFunctionReward"]


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
    labels = check_inputs(queries, prompts, labels)
    where = source or f"reward function {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)!s}"
    n = len(queries)
    try:
        output = fn(list(queries), list(prompts), labels)
    except Exception as exc:  # noqa: BLE001 - wrapped with full detail
        tb = user_traceback(exc)
        raise RewardFunctionError(
            f"{where} raised {type(exc).__name__}: {exc} (batch of {n} samples).\n"
            f"A reward function should return a (low) reward for bad outputs, not raise.\n{tb}",
            batch_size=n,
            original=exc,
            user_traceback=tb,
            source=where,
        ) from exc
    return validate_reward_output(output, n, prompts, source=where)



class LocalFunctionReward(RewardExecutor):
    """Runs a user ``reward_func`` in this process.

    Args:
        source: a path to ``reward_func.py``, inline source, or the function itself.
        module_name: module name used when loading from a file/source.
    """

    def __init__(self, source: Union[str, os.PathLike, RewardFn], module_name: str = "reward_func"):
        if callable(source) and not isinstance(source, (str, os.PathLike)):
            check_signature(source, getattr(source, "__qualname__", "reward_func"))
            self.fn: RewardFn = source
            self.where = f"reward function {getattr(source, '__qualname__', source)}"
        else:
            self.fn = load_reward_function(source, module_name)
            self.where = str(source) if looks_like_path(source) else "inline reward_func"

    def score(self, queries, prompts, labels=None) -> RewardResult:
        return call_reward_function(self.fn, queries, prompts, labels, source=self.where)

