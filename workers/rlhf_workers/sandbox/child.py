"""The sandboxed process: ``python -m rlhf_workers.sandbox.child REQUEST_FD REPLY_FD``.

It starts single-threaded, reads its configuration (one frame from the parent), walls itself in
(:func:`contain`: rlimits, then a user + network namespace, then Landlock), reports what holds, loads
the user's code and then answers calls until its request pipe closes. Every answer is one JSON frame:

* ``["ready", report]`` once the code is loaded, or ``["load_failed", message]``;
* ``["ok", value]`` - what the function returned (:func:`~.values.to_plain`);
* ``["raised", {"type", "message", "traceback", "line"}]`` - the function raised (``line``: the last
  frame in the user's file, ``path:lineno``);
* ``["invalid", message]`` - it returned something that cannot leave the sandbox.

This module imports nothing heavy itself: the user's code decides whether torch gets loaded.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Optional

from . import channel
from .landlock import LandlockError, restrict
from .limits import Limits, apply_rlimits, set_call_cpu_limit
from .netns import NamespaceError, isolate
from .reap import become_subreaper
from .values import NotPlain, to_plain

__all__ = ["contain", "main", "ProcessExitCalled", "PROC_READ"]

#: What the sandboxed process may read of /proc: its own directory ("/proc/self" resolves to it when the
#: rule is made, in this process) and system-wide figures; never another process's (environ holds secrets).
PROC_READ = ("/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/loadavg", "/proc/uptime",
             "/proc/version", "/proc/filesystems", "/proc/sys/kernel", "/proc/sys/vm")


class ProcessExitCalled(BaseException):
    """The user's code called ``os._exit`` in the serving process: reported as a fault, the worker lives on."""


def refuse_process_exit() -> None:
    """Make ``os._exit`` in this process raise :class:`ProcessExitCalled` (processes it forks exit normally)."""
    import posix

    real, serving = os._exit, os.getpid()

    def refuse(code: int = 0) -> None:
        if os.getpid() != serving:
            real(code)
        raise ProcessExitCalled(f"called os._exit({code}): a reward must return rewards, never end its process")

    os._exit = posix._exit = refuse


def contain(config: dict) -> dict:
    """Apply the configured walls to this process; what holds, and why the rest does not."""
    report: dict[str, Any] = {}
    apply_rlimits(Limits(**config["limits"]))
    report["rlimits"] = True
    # orphans of what the code starts (setsid, double forks) stay below this process, where the pool's kill finds them
    report["processes"] = ("all ended with this process (child subreaper)" if become_subreaper()
                           else "a process leaving its session may outlive a kill (prctl refused)")
    if config.get("network", False):
        report["network"] = "allowed by configuration"
    else:
        try:
            isolate()
            report["network"] = "none: own network namespace (loopback only, down)"
        except NamespaceError as exc:
            report["network"] = f"not isolated by a namespace ({exc.strerror or exc})"
    if config.get("landlock", True):
        try:
            enforced = restrict([*config["read_paths"], *PROC_READ], config["write_paths"],
                                list_paths=["/proc"])  # pids only: run_command finds what it must end
            report["filesystem"] = f"read-only outside scratch (Landlock ABI {enforced['abi']})"
            if enforced["tcp_blocked"] and not report["network"].startswith("none"):
                report["network"] = "TCP bind/connect refused by Landlock; UDP and UNIX sockets still open"
        except LandlockError as exc:
            report["filesystem"] = f"not restricted: {exc.strerror or exc}"
    else:
        report["filesystem"] = "not restricted by configuration"
    return report


def _user_line(exc: BaseException, path: Optional[str]) -> Optional[str]:
    """``file:line: code`` of the deepest frame in the user's file (else the deepest frame at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if path and os.path.abspath(f.filename) == os.path.abspath(path)] or frames[-1:]
    if not mine:
        return None
    f = mine[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _fault(exc: BaseException, path: Optional[str]) -> dict:
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(frames[:1] + frames[2:]) if len(frames) > 2 else "".join(frames)  # drop this module's frame
    return {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": text[-6000:],
            "line": _user_line(exc, path)}


def load_target(target: dict) -> Callable:
    """The callable the parent asked for: a ``reward_func`` (loaded as training loads it) or a ``module:name``."""
    if target["kind"] == "reward_func":
        from rlhf_workers.reward.loader import load_reward_function

        return load_reward_function(target["path"])
    module_name, _, name = target["callable"].partition(":")
    module = __import__(module_name, fromlist=[name])
    return getattr(module, name)


def serve(request_fd: int, reply_fd: int, fn: Callable, limits: Limits, path: Optional[str]) -> None:
    while True:
        call = channel.recv_blocking(request_fd)
        if call is None:
            return
        set_call_cpu_limit(limits)
        try:
            value = fn(*call)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: user code
            channel.send(reply_fd, ["raised", _fault(exc, path)], as_json=True)
            continue
        try:
            channel.send(reply_fd, ["ok", to_plain(value)], as_json=True)
        except (NotPlain, ValueError, OverflowError) as exc:
            channel.send(reply_fd, ["invalid", f"returned a value that cannot be read: {exc}"], as_json=True)


def main(argv: list[str]) -> int:
    request_fd, reply_fd = int(argv[1]), int(argv[2])
    config = channel.recv_blocking(request_fd)
    if config is None:
        return 1
    report = contain(config)
    for fd in (request_fd, reply_fd):  # what the user's code starts does not get the pipes
        os.set_inheritable(fd, False)
    target = config["target"]
    refuse_process_exit()
    try:
        fn = load_target(target)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises RewardLoadError
        message = getattr(exc, "message", None) or "".join(traceback.format_exception_only(type(exc), exc))
        channel.send(reply_fd, ["load_failed", str(message)[-6000:]], as_json=True)
        return 1
    channel.send(reply_fd, ["ready", report], as_json=True)
    serve(request_fd, reply_fd, fn, Limits(**config["limits"]), target.get("path"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
