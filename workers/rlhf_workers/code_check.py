"""The code check run before any GPU is taken: ``python -m rlhf_workers --check-code``.

The operator runs it in a short CPU-only pod from the worker image (the same config and code
mounts as the Ray pods, no GPU, no Secrets, no service-account token) before it creates the RayJob;
``rlhf run`` runs it before it starts Ray. It

1. imports the reward file as training does, in its sandbox (rlhf_workers.sandbox: a sandboxed
   process with ``reward.sandbox``'s limits, no network unless allowed); an agent file likewise
   (:mod:`.agent_sandbox`, ``agent.sandbox``'s limits),
2. reads a few rows of the job's prompt data (``data.prompts``, ``inputKey``, ``labelKey``; two
   placeholder rows when the data cannot be read where the check runs, which the message says),
3. calls ``reward_func`` once on them (an agent: ``reset`` and one ``step`` per row), each answer
   being the row's label (a well-formed answer) or nothing, and checks the result against the
   contract (one finite reward per query, scores in [0, 1], ...).

A reward that hangs is killed after ``reward.timeoutSeconds`` (60 s by default). The outcome is one
short JSON object, ``{"ok": bool, "message": str}``, written to ``--result-file``: in the pod that is
its termination-message file, so the verdict travels in the pod's status, where the operator reads
it. Exit codes: 0 the code passed, 1 it failed (the message quotes the error and the line), 2 the
check could not run (unreadable config or data).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

ROWS = 4
PLACEHOLDER_ROWS = [("What is 2 + 3?", "5"), ("Name a prime number greater than 10.", "11")]
MESSAGE_MAX = 3500  # the kubelet keeps 4096 bytes of a termination message; the JSON around it fits
DEFAULT_TIMEOUT = 60.0
EXIT_PASSED, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    message: str
    exit_code: int = EXIT_PASSED
    warning: str = ""  #: a pass with faults the job's policy tolerates (also the message's last part)

    def to_json(self) -> str:
        message = self.message if len(self.message) <= MESSAGE_MAX else self.message[:MESSAGE_MAX - 1] + "…"
        return json.dumps({"ok": self.ok, "message": message, **({"warning": self.warning[:300]} if self.warning else {})})


class _TimedOut(BaseException):
    """Raised inside the user's code when it ran past its time (a BaseException, so that a broad
    ``except Exception`` in the reward does not swallow it)."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises _TimedOut in the main thread (where the user's code runs)."""
    def expire(signum, frame):
        raise _TimedOut()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _ExitCalled(BaseException):
    """``os._exit`` called by the user's code: raised instead, so that the check can report it."""


@contextmanager
def _no_process_exit() -> Iterator[None]:
    import posix

    saved = os._exit

    def refuse(code: int = 0) -> None:
        raise _ExitCalled(code)

    os._exit = posix._exit = refuse
    try:
        yield
    finally:
        os._exit = posix._exit = saved


def _ending(exc: BaseException) -> str:
    """What the code did that would have ended training, in words."""
    if isinstance(exc, _ExitCalled):
        what = f"called os._exit({exc.args[0] if exc.args else ''})"
    elif isinstance(exc, SystemExit):
        what = f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    else:
        what = "raised KeyboardInterrupt"
    return f"{what}: reward code must return rewards, never end the process (in training this kills the reward worker)"


def _user_line(exc: BaseException, path: str) -> str:
    """`` at FILE, line N, in FUNC: CODE`` for the deepest frame in the user's file, or ""."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(f.filename).name}, line {f.lineno}, in {f.name}" + (f": {f.line.strip()}" if f.line else "")


def sample_rows(spec, rows: int = ROWS) -> list[tuple[str, Any]]:
    """(prompt, label) of the first ``rows`` records of the job's data (input template applied; no chat template)."""
    from .data import DataError, read_records

    data = spec.data
    records = read_records(data.prompts, data.split, config=getattr(data, "config", None))[:rows]
    if not records:
        raise DataError(f"data.prompts: {data.prompts} holds no records")
    picked = []
    for i, record in enumerate(records):
        if data.input_key not in record:
            raise DataError(f"data.inputKey: record {i} of {data.prompts} has no {data.input_key!r}"
                            f" (keys: {sorted(record)})")
        prompt = str(record[data.input_key])
        if data.input_template:
            prompt = data.input_template.replace("{}", prompt)
        picked.append((prompt, record.get(data.label_key, "") if data.label_key else ""))
    return picked


def _answer(label: Any) -> str:
    return "" if label in (None, "") else f" {label}"


def check_reward(path: str, rows: list[tuple[str, Any]], timeout: float, reward_spec: Any = None,
                 env: Optional[dict[str, str]] = None) -> CheckOutcome:
    """Import ``path`` and call its reward_func once on ``rows`` as training does: in a sandboxed
    process (rlhf_workers.sandbox, with ``reward.sandbox``'s limits and network setting), bounded by
    ``timeout`` to load and to score; the result checked against the contract.

    A call that raised is made again row by row, as training scores a chunk that raised; rows that
    still fault on their own are judged by the job's policy (:func:`_judge_rows`): the check fails
    only when more than ``reward.maxErrorRate`` of them, or all of them, faulted."""
    from .reward.sandboxed import limits_from_spec
    from .sandbox import SandboxPool, SandboxStartError

    prompts = [p for p, _ in rows]
    queries = [p + _answer(label) for p, label in rows]
    labels = [label for _, label in rows]
    # reward.sandbox as training reads it (python names: cpu_seconds, memory_mb, ..., read_paths)
    sandbox = (reward_spec.model_dump().get("sandbox") if reward_spec is not None else None) or {}
    pool = SandboxPool({"kind": "reward_func", "path": path}, size=1, timeout=timeout, start_timeout=timeout,
                       limits=limits_from_spec(sandbox), network=bool(sandbox.get("network", False)),
                       read_paths=sandbox.get("read_paths", ()), write_paths=sandbox.get("write_paths", ()), env=env)
    try:
        try:
            pool.start()
        except SandboxStartError as exc:
            return CheckOutcome(False, f"{Path(path).name} could not be loaded: {_first_lines(str(exc))}", EXIT_FAILED)
        (outcome,) = pool.map([(queries, prompts, labels)])
        singles = pool.map([([q], [p], [lb]) for q, p, lb in zip(queries, prompts, labels)]) \
            if outcome.status == "raised" and len(rows) > 1 else []
    finally:
        pool.close()
    where = f" on {len(rows)} rows of the job's data"
    if outcome.status == "timeout":
        return CheckOutcome(False, f"reward_func did not return within reward.timeoutSeconds ({timeout:g} s){where}"
                                   " and was killed", EXIT_FAILED)
    if singles:
        return _judge_rows(path, rows, singles, _fault_text(outcome), reward_spec, where)
    if not outcome.ok:
        return CheckOutcome(False, f"reward_func {_fault_text(outcome)}{where}", EXIT_FAILED)
    rewards = _contract(path, outcome.value, prompts)
    if isinstance(rewards, CheckOutcome):
        return CheckOutcome(False, f"{rewards.message}{where}", EXIT_FAILED)
    return CheckOutcome(True, f"reward_func passed{where}, in its sandbox"
                              f" (rewards {', '.join(f'{r:.4g}' for r in rewards)})")


def _fault_text(outcome) -> str:
    """``raised ValueError: message at reward_func.py, line 6: code`` for a faulted call."""
    error = outcome.error or {}
    line = f" at {_located(error['line'])}" if error.get("line") else ""
    return (f"{'raised ' if outcome.status == 'raised' else ''}"
            f"{error.get('type', 'Error')}: {error.get('message', '')}{line}")


def _contract(path: str, value: Any, prompts: list[str]):
    """The rewards of a call that returned ``value`` on ``prompts``; a failed CheckOutcome when it
    breaks the contract (one finite reward per query, scores in [0, 1], ...)."""
    from .reward import RewardError, validate_reward_output

    try:
        result = validate_reward_output(value, len(prompts), prompts, source=path)
    except RewardError as exc:
        return CheckOutcome(False, _first_lines(exc.message), EXIT_FAILED)
    scores = result.scores.tolist() if result.scores_given else []
    outside = [i for i, v in enumerate(scores) if not 0.0 <= v <= 1.0]
    if outside:
        return CheckOutcome(False, f"reward_func returned scores[{outside[0]}] = {scores[outside[0]]:.4g}; scores"
                                   " must lie in [0, 1] (they drive dynamic filtering)", EXIT_FAILED)
    return [float(r) for r in result.rewards]


def _judge_rows(path: str, rows: list, singles: list, batch_error: str, reward_spec: Any, where: str) -> CheckOutcome:
    """The verdict once each row was scored alone (the call on all rows raised ``batch_error``).

    A row that raised or timed out is a fault, as in training; the check fails when every row
    faulted or more than ``reward.maxErrorRate`` of them did, and passes with a warning quoting the
    first fault otherwise. A row whose value breaks the contract fails the check (training would
    count it invalid on every step)."""
    rewards: list[Optional[float]] = []
    faults: list[tuple[int, str]] = []
    for i, (outcome, (prompt, _)) in enumerate(zip(singles, rows)):
        if outcome.status in ("raised", "timeout"):
            faults.append((i, _fault_text(outcome)))
            rewards.append(None)
            continue
        value = _contract(path, outcome.value, [prompt]) if outcome.ok else \
            CheckOutcome(False, f"reward_func {_fault_text(outcome)}", EXIT_FAILED)
        if isinstance(value, CheckOutcome):
            return CheckOutcome(False, f"{value.message} (row {i} alone){where}", EXIT_FAILED)
        rewards.append(value[0])
    n, limit = len(rows), float(getattr(reward_spec, "max_error_rate", 0.2))
    shown = ", ".join("-" if r is None else f"{r:.4g}" for r in rewards)
    if not faults:
        warning = (f"the call on all rows at once {batch_error}, but each row alone passed (training scores such "
                   f"a call again row by row, which costs time)")
        return CheckOutcome(True, f"reward_func passed{where}, in its sandbox (rewards {shown}); warning: {warning}",
                            warning=warning)
    share = len(faults) / n
    first = f"row {faults[0][0]}: reward_func {faults[0][1]}"
    if len(faults) == n or share > limit:
        why = "every row" if len(faults) == n else f"{share:.0%} > reward.maxErrorRate {limit:.0%}"
        return CheckOutcome(False, f"reward_func faulted on {len(faults)} of {n} rows{where} ({why}); first error: "
                                   f"{first}", EXIT_FAILED)
    policy = getattr(reward_spec, "on_error", "skip")
    treated = "skips them" if policy == "skip" else \
        f"gives them reward.fallbackReward ({float(getattr(reward_spec, 'fallback_reward', 0.0)):g})"
    warning = (f"reward_func faulted on {len(faults)} of {n} rows ({share:.0%}, within reward.maxErrorRate "
               f"{limit:.0%}; training counts them as faults and {treated}); first error: {first}")
    return CheckOutcome(True, f"reward_func passed{where}, in its sandbox (rewards {shown}); warning: {warning}",
                        warning=warning)


def _located(line: str) -> str:
    """The sandbox's ``/path/reward_func.py:6: code`` as ``reward_func.py, line 6: code``."""
    import re

    match = re.match(r"^(.*?):(\d+):\s*(.*)$", line.strip())
    return f"{Path(match.group(1)).name}, line {match.group(2)}: {match.group(3)}" if match else line


def _first_lines(text: str, lines: int = 12) -> str:
    kept = text.strip().splitlines()
    return "\n".join(kept[:2] + (["..."] if len(kept) > lines else []) + kept[2:][-(lines - 2):]) if kept else text


def check_agent(path: str, rows: list[tuple[str, Any]], timeout: float, agent_spec: Any = None,
                env: Optional[dict] = None) -> CheckOutcome:
    """Load the agent file in its sandbox (as training does); ``reset`` and one ``step`` per row there,
    each bounded by ``timeout`` and contract-checked."""
    from .agent_sandbox import AgentSandbox
    from .reward.sandboxed import limits_from_spec
    from .sandbox import SandboxStartError

    sandbox_spec = agent_spec.sandbox.model_dump() if agent_spec is not None else {}
    sandbox = AgentSandbox(path, max_steps=1, timeout=timeout, size=1, limits=limits_from_spec(sandbox_spec),
                           network=bool(sandbox_spec.get("network", False)),
                           read_paths=sandbox_spec.get("read_paths", ()), write_paths=sandbox_spec.get("write_paths", ()),
                           env=env, start_timeout=timeout + 60.0)
    try:
        try:
            sandbox.start()
        except SandboxStartError as exc:
            return CheckOutcome(False, _located_message(str(exc)), EXIT_FAILED)
        faults = []
        for i, (prompt, label) in enumerate(rows):
            for method, states in (("reset", {"observation": prompt, "label": label}),
                                   ("step", {"observation_text": prompt, "action_text": _answer(label), "label": label})):
                outcome = sandbox.call(i, method, states)
                if outcome.status == "invalid":  # training would count it invalid on every step
                    return CheckOutcome(False, _agent_fault(outcome, method, i, timeout), EXIT_FAILED)
                if not outcome.ok:
                    faults.append(_agent_fault(outcome, method, i, timeout))
                    break
    finally:
        sandbox.close()
    return _judge_agent_rows(faults, len(rows), agent_spec)


def _judge_agent_rows(faults: list[str], n: int, agent_spec: Any) -> CheckOutcome:
    """As for a reward: fail when every row, or more than ``agent.maxErrorRate`` of them, faulted."""
    where = f" on {n} rows of the job's data, in its sandbox"
    if not faults:
        return CheckOutcome(True, f"the agent's reset and one step passed{where}")
    share, limit = len(faults) / n, float(getattr(agent_spec, "max_error_rate", 0.2))
    if len(faults) == n or share > limit:
        why = "every row" if len(faults) == n else f"{share:.0%} > agent.maxErrorRate {limit:.0%}"
        return CheckOutcome(False, f"the agent faulted on {len(faults)} of {n} rows ({why}); first error: {faults[0]}",
                            EXIT_FAILED)
    warning = (f"the agent faulted on {len(faults)} of {n} rows ({share:.0%}, within agent.maxErrorRate {limit:.0%}; "
               f"training counts them as faults); first error: {faults[0]}")
    return CheckOutcome(True, f"the agent's reset and one step passed{where}; warning: {warning}", warning=warning)


def _located_message(message: str) -> str:
    """``... (at /path/agent_func.py:6: code)`` with the file's name only."""
    head, sep, line = message.partition(" (at ")
    return f"{head} at {_located(line.rstrip(')'))}" if sep else message


def _agent_fault(outcome, method: str, row: int, timeout: float) -> str:
    error = outcome.error
    where = f" at {_located(error['line'])}" if error.get("line") else ""
    if outcome.status == "timeout":
        return f"the agent's {method} did not return within {timeout:g} s on row {row}{where}"
    if outcome.status == "invalid":
        return f"row {row}: {error.get('message', '')}"
    return (f"the agent raised {error.get('type', 'Error')}: {error.get('message', '')}{where}"
            f" ({method} on row {row} of the job's data)")


def run_check(config, rows: int = ROWS, timeout: Optional[float] = None) -> CheckOutcome:
    """The check of a job's code as its WorkerConfig describes it; ``timeout`` per call (default:
    reward.timeoutSeconds or agent.timeoutSeconds, else 60 s)."""
    from .data import DataError

    spec = config.spec
    if not config.reward_code_path and not config.agent_code_path:
        return CheckOutcome(True, "the job has no reward or agent code to check")
    if timeout is None:  # reward.timeoutSeconds, agent.timeoutSeconds: what training allows one call
        timeout = float(getattr(spec.reward or spec.agent, "timeout_seconds", None) or DEFAULT_TIMEOUT)
    note = ""
    try:
        picked = sample_rows(spec, rows)
    except (DataError, OSError, ValueError) as exc:
        # The data may well be readable where training runs (a Secret this check does not get, a
        # volume only the Ray pods mount): the code is still imported and called, on placeholders.
        picked, note = PLACEHOLDER_ROWS, f" (placeholder rows: the job's data could not be read here: {exc})"
    if config.reward_code_path:
        outcome = check_reward(config.reward_code_path, picked, timeout, spec.reward, spec.cluster.plain_env())
    else:
        outcome = check_agent(config.agent_code_path, picked, timeout, spec.agent, spec.cluster.plain_env())
    return CheckOutcome(outcome.ok, outcome.message + note, outcome.exit_code, outcome.warning)


def main(config_path: str, result_file: Optional[str], timeout: Optional[float] = None) -> int:
    """``python -m rlhf_workers --check-code``: print the outcome, write it to ``result_file``, exit with its code."""
    from rlhf_api.workerconfig import WorkerConfig

    try:
        config = WorkerConfig.load(config_path)
    except Exception as exc:  # noqa: BLE001 - missing, not JSON/YAML, or not a worker config
        config, outcome = None, CheckOutcome(False, f"cannot read the worker config {config_path}: {exc}",
                                             EXIT_UNUSABLE)
    if config is not None:
        try:
            outcome = run_check(config, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the verdict must reach the result file, whatever broke
            outcome = CheckOutcome(False, f"the check itself failed: {type(exc).__name__}: {exc}", EXIT_UNUSABLE)
    print(("OK: " if outcome.ok else "FAIL: ") + outcome.message, flush=True)
    if outcome.warning:
        print(f"WARNING: {outcome.warning}", file=sys.stderr, flush=True)
    if result_file:
        try:
            Path(result_file).write_text(outcome.to_json(), encoding="utf-8")
        except OSError as exc:
            print(f"could not write {result_file}: {exc}", flush=True)
    return outcome.exit_code
