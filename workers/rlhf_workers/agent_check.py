"""``rlhf test-reward AGENT.py --data SAMPLES.jsonl``: an agent file tried as training runs it.

The file is loaded in its sandboxed process (:mod:`.agent_sandbox`: the walls of a reward's sandbox;
its first line says which hold here). For every sample, a fresh ``AgentInstance`` gets ``reset``
with the prompt and label, then one ``step`` whose ``action_text`` is the sample's response; the
step must return a number ``rewards``, a string ``environment_feedback`` and ``done``. Each call is
bounded by ``--timeout``. Every sample is tried, so one run shows every fault: what it raised
(with the line of the file), timed out, or returned against the contract.

Exit codes as for a reward: 0 every sample passed, 1 a sample faulted or the file does not load,
2 the samples could not be read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, TextIO, Union

from .agent_sandbox import AgentSandbox, EpisodeOutcome
from .reward_check import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, DataError, load_samples
from .sandbox import SandboxStartError

__all__ = ["run_agent_check", "is_agent_file"]


def is_agent_file(path: Union[str, os.PathLike]) -> bool:
    """Whether the file defines OpenRLHF's agent classes and no ``reward_func`` (read, never imported)."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    functions = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return bool(classes & {"AgentInstance", "AgentExecutor"}) and "reward_func" not in functions


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fault_line(index: int, method: str, outcome: EpisodeOutcome) -> str:
    error = outcome.error
    where = f"\n    at {error['line']}" if error.get("line") else ""
    return f"  sample {index}: {method} {outcome.status}: {error.get('type', 'Error')}: {error.get('message', '')}{where}"


def run_agent_check(file: Union[str, os.PathLike], data_path: Union[str, os.PathLike], input_key: Optional[str] = None,
                    label_key: Optional[str] = None, response_key: Optional[str] = None,
                    query_key: Optional[str] = None, *, out: Optional[TextIO] = None,
                    max_samples: Optional[int] = None, timeout: float = 60.0) -> int:
    """``reset`` and one ``step`` per sample of ``data_path`` in the agent's sandbox (see the module docstring)."""
    out = out if out is not None else sys.stdout
    try:
        samples = load_samples(data_path, input_key, label_key, response_key, query_key, max_samples)
    except DataError as exc:
        print(f"ERROR: {exc}", file=out)
        return EXIT_USAGE
    where = str(Path(file).expanduser().resolve())
    sandbox = AgentSandbox(where, max_steps=1, timeout=timeout, size=1, start_timeout=timeout + 60.0)
    try:
        report = sandbox.start()
    except SandboxStartError as exc:
        print(f"FAIL: {exc}", file=out)
        return EXIT_VIOLATION
    faults = []
    try:
        print("sandbox: " + "; ".join(f"{k}: {v}" for k, v in report.items() if k != "agent"), file=out)
        print(f"agent: {where} ({', '.join(v for v in report.get('agent', {}).values() if v)})", file=out)
        for i, sample in enumerate(samples):
            for method, states in (("reset", {"observation": sample.prompt, "label": sample.label}),
                                   ("step", {"observation_text": sample.prompt, "action_text": sample.response,
                                             "label": sample.label})):
                outcome = sandbox.call(i, method, states)
                if not outcome.ok:
                    faults.append(_fault_line(i, method, outcome))
                    break
            else:
                step = outcome.value
                print(f"  sample {i}: rewards {step['rewards']:.4g}, done {step['done']}, feedback "
                      f"{_short(step['environment_feedback'])!r}  <- {_short(sample.prompt, 40)!r}", file=out)
    finally:
        sandbox.close()
    if faults:
        print(f"FAIL: {len(faults)} of {len(samples)} samples faulted:", file=out)
        print("\n".join(faults), file=out)
        return EXIT_VIOLATION
    print(f"OK: reset and one step passed on {len(samples)} samples", file=out)
    return EXIT_OK
