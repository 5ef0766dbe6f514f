"""The user-code contracts (OpenRLHF's), as checked before anything runs: a reward file defines
``reward_func(queries, prompts, labels)``; an agent file defines ``AgentExecutor`` or
``AgentInstance``."""

from __future__ import annotations

import ast



def _parse(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{what} does not parse: line {exc.lineno}: {exc.msg}") from None


def check_reward_source(source: str, what: str = "inline reward code") -> None:
    """The file must define ``reward_func(queries, prompts, labels)``."""
    tree = _parse(source, what)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "reward_func":
            args = node.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            if len(positional) >= 3 or args.vararg is not None:
                return
            raise ValueError(
                f"{what}: reward_func must take (queries, prompts, labels); it takes ({', '.join(positional)})"
            )
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "reward_func" for t in node.targets):
            return  # reward_func = make_reward(...) — checked when loaded
    raise ValueError(f"{what} must define reward_func(queries, prompts, labels)")


def check_agent_source(source: str, what: str = "inline agent code") -> None:
    """The file must define an AgentExecutor or AgentInstance class (OpenRLHF's agent API)."""
    tree = _parse(source, what)
    names = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    if not names & {"AgentExecutor", "AgentInstance"}:
        raise ValueError(f"{what} must define class AgentExecutor or AgentInstance (OpenRLHF's agent API)")
