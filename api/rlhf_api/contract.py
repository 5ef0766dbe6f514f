"""The user-code contracts (OpenRLHF's), as checked before anything runs: a reward file defines
``reward_func(queries, prompts, labels)``; an agent file defines ``AgentExecutor`` or
``AgentInstance``.

Whether a ``reward_func`` can be called is decided by one rule, :func:`reward_call_problem`,
over plain parameter descriptions (:class:`Param`). Both checks describe the function and ask
it: :func:`check_reward_source` here, from the parsed source (``rlhf validate``, admission and
launch), and the workers' loader at run time, from ``inspect.signature`` of the loaded
function. So a function the static check admits is one the loader accepts, and both refuse it
with the same words. The rule says what Python's own ``inspect.Signature.bind`` says for a
call with three positional arguments and nothing else (the tests compare the two).
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Optional, Sequence

#: The arguments OpenRLHF passes to ``reward_func``, positionally and in this order.
REWARD_ARGS = ("queries", "prompts", "labels")

#: How to write a ``reward_func`` that can be called; ends the messages of both checks.
REWARD_FUNC_FIX = (
    "Define it as `def reward_func(queries, prompts, labels):` taking three positional "
    "arguments (lists of equal length) and returning {\"rewards\": ...}."
)

# The kinds of parameter the rule tells apart (positional-only and positional-or-keyword
# parameters take a positional argument alike, so they are one kind here).
POSITIONAL, VAR_POSITIONAL, KEYWORD_ONLY, VAR_KEYWORD = "positional", "*args", "keyword-only", "**kwargs"

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: POSITIONAL,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: POSITIONAL,
    inspect.Parameter.VAR_POSITIONAL: VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY: KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD: VAR_KEYWORD,
}


@dataclass(frozen=True)
class Param:
    """One parameter of a function, as far as calling it goes: name, kind, and whether it has a default."""

    name: str
    kind: str
    has_default: bool = False


def reward_call_problem(params: Sequence[Param]) -> Optional[str]:
    """Why ``reward_func(queries, prompts, labels)`` - three positional arguments, no keywords -
    would fail against ``params`` (in declaration order), or None when the call binds.

    The three arguments fill the positional parameters in order, the rest going to ``*args``;
    with fewer than three positional parameters and no ``*args`` one is left over. Every
    parameter left unfilled after that (positional ones past the third, keyword-only ones)
    needs a default. The reasons are worded as ``inspect.Signature.bind`` words them.
    """
    positional = [p for p in params if p.kind == POSITIONAL]
    if len(positional) < len(REWARD_ARGS) and not any(p.kind == VAR_POSITIONAL for p in params):
        return "too many positional arguments"
    unfilled = positional[len(REWARD_ARGS):] + [p for p in params if p.kind == KEYWORD_ONLY]
    for param in unfilled:
        if not param.has_default:
            return f"missing a required argument: {param.name!r}"
    return None


def params_of_signature(signature: inspect.Signature) -> list[Param]:
    """The parameters of a live function (the workers' loader)."""
    return [Param(p.name, _KINDS[p.kind], p.default is not inspect.Parameter.empty)
            for p in signature.parameters.values()]


def params_of_ast(args: ast.arguments) -> list[Param]:
    """The parameters of a ``def`` as parsed (the static check); defaults align to the last positional ones."""
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    params = [Param(a.arg, POSITIONAL, i >= first_default) for i, a in enumerate(positional)]
    if args.vararg is not None:
        params.append(Param(args.vararg.arg, VAR_POSITIONAL))
    params += [Param(a.arg, KEYWORD_ONLY, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg is not None:
        params.append(Param(args.kwarg.arg, VAR_KEYWORD))
    return params


def reward_call_error(signature: str, problem: str) -> str:
    """The message for a ``reward_func`` the rule refuses; ``signature`` as written, e.g. ``(queries)``."""
    return (f"`reward_func{signature}` cannot be called as reward_func({', '.join(REWARD_ARGS)}) ({problem}). "
            f"{REWARD_FUNC_FIX}")


def _parse(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{what} does not parse: line {exc.lineno}: {exc.msg}") from None


def check_reward_source(source: str, what: str = "inline reward code") -> None:
    """The file must define a ``reward_func`` that can be called as ``reward_func(queries, prompts, labels)``."""
    tree = _parse(source, what)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "reward_func":
            problem = reward_call_problem(params_of_ast(node.args))
            if problem is None:
                return
            raise ValueError(f"{what}: {reward_call_error(f'({ast.unparse(node.args)})', problem)}")
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "reward_func" for t in node.targets):
            return  # reward_func = make_reward(...) — checked when loaded
    raise ValueError(f"{what} must define reward_func(queries, prompts, labels)")


def check_agent_source(source: str, what: str = "inline agent code") -> None:
    """The file must define an AgentExecutor or AgentInstance class (OpenRLHF's agent API)."""
    tree = _parse(source, what)
    names = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    if not names & {"AgentExecutor", "AgentInstance"}:
        raise ValueError(f"{what} must define class AgentExecutor or AgentInstance (OpenRLHF's agent API)")
