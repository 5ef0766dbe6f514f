"""Loading user reward code: ``reward_func`` from a ``reward_func.py`` path or inline source,
executed the way OpenRLHF executes it, cached so the module body runs once, and checked for a
signature that can be called as ``reward_func(queries, prompts, labels)``."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import threading
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Union

from rlhf_api.contract import REWARD_FUNC_FIX, params_of_signature, reward_call_error, reward_call_problem

from .errors import RewardLoadError

__all__ = ["RewardFn", "load_reward_function", "check_signature", "looks_like_path", "user_traceback"]

RewardFn = Callable[[list, list, list], Any]

_HERE = os.path.normcase(os.path.dirname(os.path.abspath(__file__)))

_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple, RewardFn] = {}


def looks_like_path(source: Union[str, os.PathLike]) -> bool:
    if isinstance(source, os.PathLike):
        return True
    if "\n" in source:
        return False
    return source.endswith(".py") or os.path.exists(source)


def check_signature(fn: Any, where: str) -> None:
    """Refuse a ``reward_func`` that is not callable as ``reward_func(queries, prompts, labels)``,
    by the rule the static check of the source uses (:func:`rlhf_api.contract.reward_call_problem`)."""
    if not callable(fn):
        raise RewardLoadError(f"{where}: `reward_func` is a {type(fn).__name__}, not a function. {REWARD_FUNC_FIX}",
                              source=where)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins / C callables: cannot check, trust the user
        return
    problem = reward_call_problem(params_of_signature(sig))
    if problem is not None:
        raise RewardLoadError(f"{where}: {reward_call_error(str(sig), problem)}", source=where)


def load_reward_function(
    source: Union[str, os.PathLike],
    module_name: str = "reward_func",
    *,
    reload: bool = False,
) -> RewardFn:
    """Load ``reward_func`` from a ``reward_func.py`` path or from inline Python source.

    ``source`` is treated as a path when it is a ``PathLike``, or a one-line string that
    ends in ``.py`` or names an existing file; otherwise it is module source code.

    The module body (e.g. a ``transformers.pipeline(...)`` at top level) runs once: the
    function is cached per file (path, size and mtime) or per source text, and later
    calls return the same callable unless ``reload=True``.

    The module is executed like OpenRLHF does (``importlib`` from the file location,
    named ``module_name``); it is registered in ``sys.modules`` only while its body runs
    (so dataclasses and ``pickle`` inside it work) and removed afterwards, which keeps
    the function picklable *by value* for Ray, as in OpenRLHF.

    Raises:
        RewardLoadError: the file is missing, fails to import (the message carries the
            traceback), lacks ``reward_func``, or ``reward_func`` does not take three
            positional arguments.
    """
    if looks_like_path(source):
        path = Path(source).expanduser().resolve()
        where = str(path)
        if not path.is_file():
            raise RewardLoadError(f"reward file {where} does not exist (or is not a file)", source=where)
        st = path.stat()
        key: tuple = ("file", where, st.st_size, st.st_mtime_ns, module_name)
        code = path.read_text(encoding="utf-8")
        # Modules beside the file import as they would from Ray's working directory (and as the
        # import check resolves them): after the installed ones, so a sibling never shadows them.
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))
    else:
        code = str(source)
        digest = hashlib.sha256(code.encode()).hexdigest()[:16]
        where = f"<inline reward source {digest}>"
        key = ("source", digest, module_name)
        path = None

    with _LOAD_LOCK:
        if not reload and key in _LOADED:
            return _LOADED[key]
        module = _exec_module(code, path, where, module_name)
        if not hasattr(module, "reward_func"):
            public = sorted(n for n, v in vars(module).items()
                            if inspect.isfunction(v) and v.__module__ == module_name and not n.startswith("_"))
            hint = f" It defines: {', '.join(public)}." if public else ""
            raise RewardLoadError(
                f"{where} does not define `reward_func`.{hint} Add "
                "`def reward_func(queries, prompts, labels):` returning {\"rewards\": ...} "
                "(OpenRLHF looks up exactly this name).",
                source=where,
            )
        fn = module.reward_func
        check_signature(fn, where)
        _LOADED[key] = fn
        return fn


def _exec_module(code: str, path: Optional[Path], where: str, module_name: str) -> ModuleType:
    if path is not None:
        spec = importlib.util.spec_from_file_location(module_name, str(path))
        if spec is None or spec.loader is None:
            raise RewardLoadError(f"cannot import {where} as a Python module", source=where)
        module = importlib.util.module_from_spec(spec)
    else:
        module = ModuleType(module_name)
        module.__file__ = where
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        if path is not None:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            exec(compile(code, where, "exec"), module.__dict__)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported with its traceback
        tb = user_traceback(exc)
        raise RewardLoadError(
            f"{where} failed while loading (module-level code raised {type(exc).__name__}: {exc}).\n{tb}",
            source=where,
        ) from exc
    finally:
        if previous is not None:
            sys.modules[module_name] = previous
        else:
            sys.modules.pop(module_name, None)
    return module


def user_traceback(exc: BaseException) -> str:
    """Format ``exc``'s traceback without the frames of this package (the loader and the executors)."""
    tb = exc.__traceback__
    while tb is not None and _in_this_package(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    # Drop importlib's internal frames before the user's module too.
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith("<frozen importlib"):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _in_this_package(filename: str) -> bool:
    return os.path.normcase(os.path.dirname(os.path.abspath(filename))) == _HERE
