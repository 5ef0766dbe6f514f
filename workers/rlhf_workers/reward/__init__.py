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

The package, one concern a module:

* :mod:`.errors` - reward faults, each a :class:`RewardError` subclass (a *reward fault*),
  never silently turned into a low reward; ``RewardError.sample_index`` is the offending
  sample when one is known;
* :mod:`.result` - :class:`RewardResult`, the validated output of one call, and
  :class:`RewardExecutor`, the interface every executor shares
  (``score(queries, prompts, labels) -> RewardResult``), so a sandboxed or parallel
  executor can be dropped in later;
* :mod:`.loader` - ``reward_func`` from a file or inline source, loaded once;
* :mod:`.contract` - the inputs and the returned value checked against the contract;
* one module per executor: :mod:`.function` (:class:`LocalFunctionReward`),
  :mod:`.remote` (:class:`RemoteReward`) and :mod:`.model` (:class:`RewardModelReward`);
* :mod:`.faults` - :class:`RewardFault` (a call that raised, timed out or broke the contract),
  counted per step by :class:`FaultWindow`, which stops a run whose fault rate passes the bound;
* :mod:`.sandboxed` - what training runs: the function in sandboxed processes with a timeout
  (:class:`SandboxedFunctionReward`), the others bounded by the same timeout (:class:`GuardedReward`).

Everything is importable from ``rlhf_workers.reward`` itself, as before the split.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562), so a sandboxed process importing only
# ``rlhf_workers.reward.loader`` does not load torch unless the user's code does.
_EXPORTS = {
    "KNOWN_KEYS": "contract", "validate_reward_output": "contract",
    "RemoteRewardError": "errors", "RewardContractError": "errors", "RewardError": "errors",
    "RewardFunctionError": "errors", "RewardLoadError": "errors",
    "LocalFunctionReward": "function", "call_reward_function": "function",
    "RewardFn": "loader", "load_reward_function": "loader",
    "RewardModelReward": "model", "RemoteReward": "remote",
    "RewardExecutor": "result", "RewardResult": "result",
    "RewardFault": "faults", "FaultWindow": "faults", "RewardFaultsExceeded": "faults",
    "SandboxedFunctionReward": "sandboxed", "GuardedReward": "sandboxed", "make_reward_executor": "sandboxed",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
    "RewardFn",
    "KNOWN_KEYS",
    "RewardFault",
    "FaultWindow",
    "RewardFaultsExceeded",
    "SandboxedFunctionReward",
    "GuardedReward",
    "make_reward_executor",
]
