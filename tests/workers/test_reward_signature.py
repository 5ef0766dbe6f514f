"""One signature rule for reward_func: the static check of the source (rlhf_api.contract, run by
`rlhf validate` and the operator) and the workers' loader (inspect at run time) ask the same
function, and it says what Python's own Signature.bind says for reward_func(q, p, l)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_api.contract import check_reward_source, params_of_ast, params_of_signature, reward_call_problem
from rlhf_workers.reward import LocalFunctionReward, RewardLoadError, load_reward_function

SIGNATURES = [
    # accepted
    "queries, prompts, labels", "q, p, l", "q, p, l, extra=None", "*args", "queries, *rest, **kw",
    "queries, prompts, labels, **kwargs", "q, p, l, /", "q, /, p, l", "q, p, l, *, k=1", "q, p=None, *a, k=2, **kw",
    "q, p, l=None", "q=1, p=2, l=3", "*a, k=0", "q, p, l, *a", "q, p, l, /, x=1, *, y=2, **z",
    # refused
    "", "queries", "queries, prompts", "queries, prompts, labels, extra", "*, queries, prompts, labels",
    "**kwargs", "q, p, **kw", "q, p, l, *, k", "*args, k", "q, *a, k, j=1", "q, p, l, x, /",
    "q, p, /", "q, p, l, extra, *args", "q, p, l, d=1, *a, k, **kw", "q, p, *, l",
]


def define(sig: str) -> str:
    return f"def reward_func({sig}):\n    return {{}}\n"


def python_says(fn) -> Optional[str]:
    try:
        inspect.signature(fn).bind([], [], [])
    except TypeError as exc:
        return str(exc)
    return None


def compiled(source: str):
    namespace: dict = {}
    exec(compile(source, "<test>", "exec"), namespace)
    return namespace["reward_func"]


def static_error(source: str) -> Optional[str]:
    try:
        check_reward_source(source, what="W")
    except ValueError as exc:
        return str(exc)
    return None


def runtime_error(tmp_path, name: str, source: str) -> Optional[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    try:
        load_reward_function(path)
    except RewardLoadError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("sig", SIGNATURES)
def test_the_rule_says_what_python_says(sig):
    source = define(sig)
    fn = compiled(source)
    expected = python_says(fn)
    assert reward_call_problem(params_of_signature(inspect.signature(fn))) == expected
    node = ast.parse(source).body[0]
    assert reward_call_problem(params_of_ast(node.args)) == expected


@pytest.mark.parametrize("i,sig", list(enumerate(SIGNATURES)))
def test_static_check_and_loader_agree_word_for_word(tmp_path, i, sig):
    source = define(sig)
    static = static_error(source)
    runtime = runtime_error(tmp_path, f"sig{i}", source)
    assert (static is None) == (runtime is None) == (python_says(compiled(source)) is None)
    if static is not None:
        # Both name the function as written and the reason, after their own `where: ` prefix.
        assert static.removeprefix("W: ") == runtime.removeprefix(f"{tmp_path / f'sig{i}.py'}: ")
        assert f"`reward_func({sig})` cannot be called as reward_func(queries, prompts, labels)" in static
        assert "Define it as `def reward_func(queries, prompts, labels):`" in static


def test_a_function_object_is_held_to_the_same_rule():
    def reward_func(queries, prompts):
        return {}

    with pytest.raises(RewardLoadError) as info:
        LocalFunctionReward(reward_func)
    where = reward_func.__qualname__
    assert str(info.value).removeprefix(f"{where}: ") == static_error(define("queries, prompts")).removeprefix("W: ")


def test_what_only_one_side_can_know_stays_with_that_side(tmp_path):
    # Bound later (a factory): the static check cannot see the signature, the loader checks it.
    made = "def make():\n    def f(q):\n        return {}\n    return f\n\nreward_func = make()\n"
    assert static_error(made) is None
    assert "too many positional arguments" in runtime_error(tmp_path, "made", made)
    # Not a function at all: the loader says so.
    assert "is a int, not a function" in runtime_error(tmp_path, "notfn", "reward_func = 3\n")
    # Builtins have no signature to read: trusted, as before.
    assert load_reward_function("reward_func = max\n") is max


@st.composite
def signatures(draw) -> str:
    """Any valid parameter list: positional-only, ordinary, *args, keyword-only, **kwargs, defaults."""
    names = iter(f"a{i}" for i in range(20))
    n_posonly, n_args = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    n_defaults = draw(st.integers(0, n_posonly + n_args))
    positional = [next(names) for _ in range(n_posonly + n_args)]
    positional = [p + ("=0" if i >= len(positional) - n_defaults else "") for i, p in enumerate(positional)]
    parts = positional[:n_posonly] + (["/"] if n_posonly else []) + positional[n_posonly:]
    kwonly = [next(names) + ("=0" if d else "") for d in draw(st.lists(st.booleans(), max_size=3))]
    if draw(st.booleans()):
        parts.append("*" + next(names))
    elif kwonly:
        parts.append("*")
    parts += kwonly
    if draw(st.booleans()):
        parts.append("**" + next(names))
    return ", ".join(parts)


@settings(max_examples=300, deadline=None)
@given(signatures())
def test_any_signature_the_rule_and_python_agree(sig):
    source = define(sig)
    fn = compiled(source)
    expected = python_says(fn)
    assert reward_call_problem(params_of_signature(inspect.signature(fn))) == expected
    assert reward_call_problem(params_of_ast(ast.parse(source).body[0].args)) == expected
    static = static_error(source)
    assert (static is None) == (expected is None)
    if static is not None:
        assert f"({expected})" in static


def test_seed_style_reward_files_pass_both(tmp_path):
    source = textwrap.dedent("""
        import re

        def reward_func(queries, prompts, labels, **kwargs):
            return {"rewards": [float(bool(re.search(r"\\d", q))) for q in queries]}
    """)
    assert static_error(source) is None
    assert runtime_error(tmp_path, "seedlike", source) is None
