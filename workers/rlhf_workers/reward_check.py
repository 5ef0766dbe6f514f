"""Engine of ``rlhf test-reward FILE.py --data SAMPLES.jsonl``: run a reward function locally.

Loads a user ``reward_func.py`` exactly as training does, calls it once on the samples of a
JSONL file, prints a per-sample table (rewards, scores, per-sample extra_logs) and the batch
extra_logs, and checks OpenRLHF's contract. Typical use::

    rlhf test-reward reward_func.py --data samples.jsonl --label-key answer

Each JSONL line is an object holding:

* the prompt, under ``--input-key`` (default: ``prompt``, else ``input``);
* the response under ``--response-key`` (default: ``response``, else ``output`` or
  ``completion``), in which case the query is ``prompt + response`` (what OpenRLHF
  decodes from the generated sequence); or the full query under ``--query-key``
  (default ``query``), which must then start with the prompt;
* optionally a label under ``--label-key`` (no label key -> ``""``, like OpenRLHF).

The reward runs as in training: in a sandboxed process (no network, read-only file system outside
a scratch directory, rlimits; the first line of output says which walls hold here), bounded by
``--timeout`` seconds to load and as many to score, so the check never waits without end.

Exit codes: 0 - the contract holds; 1 - a contract violation, the function raised, ended its
process or timed out (the reason is printed); 2 - the reward file or the data could not be used.

Violations: the function raises; it does not return a dict with ``rewards``; ``rewards``
or ``scores`` are not one finite number per query (wrong length, 2-D, non-numeric, NaN,
inf); ``extra_logs`` is not a dict of numbers; ``scores`` it returns lie outside [0, 1].
Warnings (exit 0): unknown keys, integer dtypes (cast to float), ``scores`` omitted while
``rewards`` lie outside [0, 1] (only matters with dynamic filtering).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TextIO, Union

from rlhf_workers.reward import RewardError, RewardResult, validate_reward_output
from rlhf_workers.sandbox import Outcome, SandboxPool, SandboxStartError

__all__ = ["run_reward_check", "add_arguments", "main", "load_samples", "Sample", "EXIT_OK", "EXIT_VIOLATION",
           "EXIT_USAGE"]

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2

DEFAULT_INPUT_KEYS = ("prompt", "input")
DEFAULT_RESPONSE_KEYS = ("response", "output", "completion")
DEFAULT_QUERY_KEY = "query"
_CELL = 40


class DataError(ValueError):
    """The samples file cannot be used (reported with exit code 2)."""


@dataclass
class Sample:
    query: str
    prompt: str
    label: Any
    response: str
    line: int
    fields: tuple[str, ...] = ()


def _pick(row: dict, explicit: Optional[str], defaults: tuple[str, ...]) -> Optional[str]:
    if explicit is not None:
        return explicit if explicit in row else None
    for key in defaults:
        if key in row:
            return key
    return None


def load_samples(
    data_path: Union[str, os.PathLike],
    input_key: Optional[str] = None,
    label_key: Optional[str] = None,
    response_key: Optional[str] = None,
    query_key: Optional[str] = None,
    max_samples: Optional[int] = None,
) -> list[Sample]:
    """Read samples from a JSONL file (see the module docstring for the keys).

    Raises:
        DataError: missing file, bad JSON, or a line without the needed keys.
    """
    path = Path(data_path)
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist")
    samples: list[Sample] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            pkey = _pick(row, input_key, DEFAULT_INPUT_KEYS)
            if pkey is None:
                wanted = repr(input_key) if input_key else " or ".join(repr(k) for k in DEFAULT_INPUT_KEYS)
                raise DataError(f"{path}:{lineno}: no prompt field {wanted} (keys: {sorted(row)}); use --input-key")
            prompt = row[pkey]
            if not isinstance(prompt, str):
                raise DataError(f"{path}:{lineno}: prompt {pkey!r} is a {type(prompt).__name__}, expected a string")
            qkey = query_key or DEFAULT_QUERY_KEY
            rkey = _pick(row, response_key, DEFAULT_RESPONSE_KEYS)
            if rkey is not None:
                response = row[rkey]
                if not isinstance(response, str):
                    raise DataError(f"{path}:{lineno}: response {rkey!r} is a {type(response).__name__}, "
                                    "expected a string")
                query = prompt + response
            elif qkey in row and response_key is None:
                query = row[qkey]
                if not isinstance(query, str):
                    raise DataError(f"{path}:{lineno}: query {qkey!r} is a {type(query).__name__}, expected a string")
                if not query.startswith(prompt):
                    raise DataError(f"{path}:{lineno}: query {qkey!r} does not start with the prompt; in training "
                                    "the query is always prompt + response")
                response = query[len(prompt):]
            else:
                wanted = repr(response_key) if response_key else " or ".join(repr(k) for k in DEFAULT_RESPONSE_KEYS)
                raise DataError(f"{path}:{lineno}: no response field {wanted} and no full query {qkey!r} "
                                f"(keys: {sorted(row)}); use --response-key or --query-key")
            if label_key is None:
                label: Any = ""
            elif label_key in row:
                label = row[label_key]
            else:
                raise DataError(f"{path}:{lineno}: no label field {label_key!r} (keys: {sorted(row)})")
            samples.append(Sample(query=query, prompt=prompt, label=label, response=response, line=lineno,
                                  fields=tuple(row)))
            if max_samples is not None and len(samples) >= max_samples:
                break
    if not samples:
        raise DataError(f"samples file {path} has no samples")
    return samples


# --------------------------------------------------------------------------- output


def _short(value: Any, limit: int = _CELL) -> str:
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    s = s.replace("\n", "\\n")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class _Printer:
    """rich when available (and not disabled), plain text otherwise."""

    def __init__(self, out: TextIO, use_rich: Optional[bool]):
        self.out = out
        self.console = None
        if use_rich is not False:
            try:
                from rich.console import Console

                self.console = Console(file=out, width=160, soft_wrap=False, highlight=False,
                                       force_terminal=None if out in (sys.stdout, sys.stderr) else False)
            except ImportError:
                if use_rich:
                    raise

    def line(self, text: str = "", style: Optional[str] = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False)
        else:
            print(text, file=self.out)

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        if self.console is not None:
            from rich.table import Table

            table = Table(title=title, show_lines=False)
            for i, h in enumerate(headers):
                table.add_column(h, justify="right" if i == 0 or h in ("reward", "score") else "left",
                                 overflow="fold")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title, file=self.out)
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)), file=self.out)
        print("  ".join("-" * w for w in widths), file=self.out)
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)), file=self.out)


def _report(printer: _Printer, samples: list[Sample], result: RewardResult, show_labels: bool) -> None:
    per_sample = list(result.extra_logs_per_sample)
    headers = ["#", "prompt", "response"] + (["label"] if show_labels else []) + ["reward", "score"] + per_sample
    rows = []
    for i, s in enumerate(samples):
        row = [str(i), _short(s.prompt), _short(s.response)]
        if show_labels:
            row.append(_short(s.label, 20))
        row += [_fmt(float(result.rewards[i])), _fmt(float(result.scores[i]))]
        row += [_fmt(float(result.extra_logs_per_sample[k][i])) for k in per_sample]
        rows.append(row)
    printer.table(f"reward_func on {len(samples)} samples", headers, rows)
    r = result.rewards
    printer.line(f"rewards: mean {_fmt(float(r.mean()))}  min {_fmt(float(r.min()))}  max {_fmt(float(r.max()))}")
    if not result.scores_given:
        printer.line("scores: not returned (OpenRLHF uses rewards as scores)")
    if result.extra_logs:
        printer.line("extra_logs (batch mean): " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.extra_logs.items()))


# --------------------------------------------------------------------------- entry points


def _ending(error: dict) -> Optional[str]:
    """What the reward did that would end its process, in words (None for an ordinary exception)."""
    kind, message = error.get("type"), error.get("message", "")
    if kind == "ProcessExitCalled":
        what = message.split(":")[0]
    elif kind == "SystemExit":
        what = f"called sys.exit({message}) (raised SystemExit)"
    elif kind == "KeyboardInterrupt":
        what = "raised KeyboardInterrupt"
    else:
        return None
    return (f"{what}: a reward function must return rewards, never end the process; in training every sample "
            "of the call is a reward fault")


def _print_fault(printer: "_Printer", outcome: Outcome, n: int, timeout: float) -> None:
    error = outcome.error or {}
    if outcome.status == "timeout":
        printer.line(f"FAIL: reward_func did not return within {timeout:g}s on {n} samples and was killed (in "
                     "training: a timeout fault of every sample of the call); --timeout raises the limit",
                     style="bold red")
    elif outcome.status == "invalid":
        printer.line(f"FAIL: reward_func {error.get('message', 'returned a value that cannot be read')}",
                     style="bold red")
    elif _ending(error):
        printer.line(f"FAIL: reward_func {_ending(error)}", style="bold red")
    elif error.get("type") in ("SandboxDied", "SandboxStartError"):
        printer.line(f"FAIL: {error.get('message')}", style="bold red")
    else:
        printer.line(f"FAIL: reward_func raised {error.get('type')}: {error.get('message')} (batch of {n} samples)",
                     style="bold red")
    if error.get("traceback"):
        printer.line(error["traceback"].rstrip())
    if outcome.output.strip():
        printer.line("its output (last lines):\n" + outcome.output.rstrip()[-2000:])


def _call(printer: "_Printer", pool: SandboxPool, samples: list[Sample], where: str) -> Optional[RewardResult]:
    """The reward's result on ``samples`` (one sandboxed call), or None after printing why it failed."""
    queries, prompts = [s.query for s in samples], [s.prompt for s in samples]
    (outcome,) = pool.map([(queries, prompts, [s.label for s in samples])])
    if not outcome.ok:
        _print_fault(printer, outcome, len(samples), pool.timeout)
        return None
    try:
        return validate_reward_output(outcome.value, len(samples), prompts, source=where)
    except RewardError as exc:
        printer.line(f"FAIL: {exc.message}", style="bold red")
        if exc.sample_index is not None and 0 <= exc.sample_index < len(samples):
            s = samples[exc.sample_index]
            printer.line(f"  sample {exc.sample_index} (data line {s.line}): prompt {_short(s.prompt, 80)!r}, "
                         f"response {_short(s.response, 80)!r}")
    return None


def run_reward_check(
    file: Union[str, os.PathLike],
    data_path: Union[str, os.PathLike],
    input_key: Optional[str] = None,
    label_key: Optional[str] = None,
    response_key: Optional[str] = None,
    query_key: Optional[str] = None,
    *,
    out: Optional[TextIO] = None,
    max_samples: Optional[int] = None,
    use_rich: Optional[bool] = None,
    timeout: float = 60.0,
) -> int:
    """Run ``file``'s ``reward_func`` on the samples in ``data_path`` and check the contract.

    Args:
        file: path to the user's ``reward_func.py``.
        data_path: JSONL samples (see the module docstring).
        input_key: prompt field (default ``prompt``, else ``input``).
        label_key: label field; ``None`` passes ``""`` labels, as OpenRLHF without ``--label_key``.
        response_key: response field (default ``response``/``output``/``completion``).
        query_key: full-query field used when there is no response field (default ``query``).
        out: where to print (default ``sys.stdout``).
        max_samples: use only the first N samples.
        use_rich: force (True) or disable (False) rich output; default: rich if installed.
        timeout: seconds the reward may take to load, and to score the samples; past them it is
            killed and the check fails (it never waits without end).

    Returns:
        :data:`EXIT_OK` (0), :data:`EXIT_VIOLATION` (1) or :data:`EXIT_USAGE` (2).
    """
    out = out if out is not None else sys.stdout
    printer = _Printer(out, use_rich)
    try:
        samples = load_samples(data_path, input_key, label_key, response_key, query_key, max_samples)
    except DataError as exc:
        printer.line(f"ERROR: {exc}", style="bold red")
        return EXIT_USAGE

    where = str(Path(file).expanduser().resolve())
    if not Path(where).is_file():
        printer.line(f"ERROR: reward file {where} does not exist", style="bold red")
        return EXIT_USAGE
    pool = SandboxPool({"kind": "reward_func", "path": where}, size=1, timeout=timeout, start_timeout=timeout)
    try:
        report = pool.start()
    except SandboxStartError as exc:
        printer.line(f"FAIL: {exc}", style="bold red")
        return EXIT_VIOLATION
    try:
        return _check(printer, pool, samples, where, report, label_key=label_key, input_key=input_key,
                      response_key=response_key, query_key=query_key)
    finally:
        pool.close()


def _check(printer: "_Printer", pool: SandboxPool, samples: list[Sample], where: str, report: dict, *,
           label_key, input_key, response_key, query_key) -> int:
    """The check proper, once the reward has loaded in its sandbox."""
    printer.line(f"sandbox: network {report.get('network', '?')}; file system {report.get('filesystem', '?')}")
    if label_key is None:
        used = {input_key, response_key, query_key, *DEFAULT_INPUT_KEYS, *DEFAULT_RESPONSE_KEYS, DEFAULT_QUERY_KEY}
        others = [k for k in samples[0].fields if k not in used]
        if others:
            printer.line(f"note: no --label-key given, so labels are \"\" (as OpenRLHF without --label_key); "
                         f"other fields in the data: {', '.join(others)}")
    started = time.perf_counter()
    result = _call(printer, pool, samples, where)
    if result is None:
        return EXIT_VIOLATION
    elapsed = time.perf_counter() - started

    _report(printer, samples, result, show_labels=label_key is not None)
    printer.line(f"reward_func took {elapsed:.3f}s for {len(samples)} samples")

    violations: list[str] = []
    if result.scores_given:
        outside = [i for i, v in enumerate(result.scores.tolist()) if not 0.0 <= v <= 1.0]
        if outside:
            i = outside[0]
            violations.append(
                f"scores must lie in [0, 1] (they drive dynamic filtering); scores[{i}] = "
                f"{_fmt(float(result.scores[i]))} (data line {samples[i].line})"
                + (f" and {len(outside) - 1} more" if len(outside) > 1 else ""))
    else:
        outside = [i for i, v in enumerate(result.rewards.tolist()) if not 0.0 <= v <= 1.0]
        if outside:
            result.warnings.append("no `scores` returned and some rewards lie outside [0, 1]; return `scores` in "
                                   "[0, 1] if you use dynamic filtering")
    for w in result.warnings:
        if not w.startswith("`scores["):  # the out-of-range score is reported as a violation above
            printer.line(f"warning: {w}", style="yellow")
    if violations:
        for v in violations:
            printer.line(f"FAIL: {v}", style="bold red")
        return EXIT_VIOLATION
    printer.line("OK: reward_func satisfies the reward contract", style="bold green")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``test-reward`` arguments to ``parser`` (for ``rlhf test-reward``)."""
    parser.add_argument("file", help="reward_func.py to test")
    parser.add_argument("--data", required=True, help="JSONL samples: prompt + response (or query) [+ label]")
    parser.add_argument("--input-key", default=None, help="prompt field (default: prompt, else input)")
    parser.add_argument("--label-key", default=None, help="label field passed as `labels` (default: none -> \"\")")
    parser.add_argument("--response-key", default=None,
                        help="response field (default: response, else output or completion)")
    parser.add_argument("--query-key", default=None, help="full prompt+response field when there is no response "
                                                          "field (default: query)")
    parser.add_argument("--max-samples", type=int, default=None, help="use only the first N samples")
    parser.add_argument("--plain", action="store_true", help="plain text output (no rich)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds the reward may take (default 60)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m rlhf_workers.reward_check FILE.py --data SAMPLES.jsonl ...``"""
    parser = add_arguments(argparse.ArgumentParser(prog="rlhf test-reward", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    return run_reward_check(
        args.file,
        args.data,
        input_key=args.input_key,
        label_key=args.label_key,
        response_key=args.response_key,
        query_key=args.query_key,
        max_samples=args.max_samples,
        use_rich=False if args.plain else None,
        timeout=args.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
