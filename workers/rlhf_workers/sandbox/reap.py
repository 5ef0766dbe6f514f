"""Ending everything sandboxed code started, including what left its process group.

A process that calls ``setsid`` (or a daemon that forks twice) is out of reach of ``killpg``, and
once its parent is gone the kernel re-parents it to the nearest *child subreaper* above it, or to
the container's init. Two unprivileged tools bring it back into reach:

* :func:`become_subreaper` - ``prctl(PR_SET_CHILD_SUBREAPER)``: orphans below this process are
  re-parented to it, not to init, so they stay among its descendants. Each sandboxed process
  sets it on itself; :func:`~.run.run_command` sets it on its caller.
* :func:`kill_tree` (used by the pool, outside the sandbox, where every ``/proc/PID/stat`` is
  readable) - stop the root, then every descendant found by walking parent pids, scanning again
  until a scan finds nobody new (a stopped process cannot fork, and a fork that a stop interrupts
  is undone by the kernel), then kill them all and the root last.
* :func:`sweep_adopted` (used inside the sandbox, where Landlock leaves only the *names* under
  ``/proc`` listable) - kill what this process adopted, layer by layer: every pid listed in
  ``/proc`` that ``waitid`` says is our child and that runs in another session; killing a layer
  hands its children to us, and the next pass kills them, until none is left.

No privilege, no cgroup and no namespace is needed; ``RLIMIT_NPROC`` still bounds how many there
can be.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Iterable

__all__ = ["become_subreaper", "descendants", "kill_tree", "own_children", "sweep_adopted"]

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
_subreaper_pid = 0  # the process that set it (a forked child does not inherit it)


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (once per process); False if refused."""
    global _subreaper_pid
    if _subreaper_pid != os.getpid():
        if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
        _subreaper_pid = os.getpid()
    return True


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process this one can see (``/proc/PID/stat``)."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # the name in parentheses may hold spaces
        if len(fields) > 1:
            parents[int(name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children first), found through the parent pids in ``/proc``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        below = [c for p in frontier for c in children.get(p, ()) if c != root]
        found += below
        frontier = below
    return found


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(root: int, *, rounds: int = 200) -> int:
    """Stop ``root`` and all its descendants, scanning until no new one appears, then SIGKILL them
    (root last, so that it keeps adopting orphans until the end); how many descendants there were."""
    _signal([root], signal.SIGSTOP)
    stopped: set[int] = set()
    for _ in range(rounds):
        new = [p for p in descendants(root) if p not in stopped]
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        stopped.update(new)
    _signal(stopped, signal.SIGKILL)
    _signal([root], signal.SIGKILL)
    return len(stopped)


def _is_child(pid: int) -> bool:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except OSError:  # ECHILD: not a child of this process
        return False


def own_children() -> set[int]:
    """This process's children: the pids listed in ``/proc`` that ``waitid`` accepts as ours (no file
    under ``/proc`` is read, so this works where Landlock allows only listing it)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return set()
    me = os.getpid()
    return {int(n) for n in names if n.isdigit() and int(n) != me and _is_child(int(n))}


def sweep_adopted(before: set[int], spare: Iterable[int] = (), *, seconds: float = 5.0) -> int:
    """Kill the children this process gained since ``before`` that run in another session than its
    own (what a run started in a session of its own left behind, re-parented here), layer by layer;
    reap them; how many there were. ``spare``: pids to leave alone (other runs still going)."""
    own_session = os.getsid(0)
    deadline = time.monotonic() + seconds
    killed = 0
    while time.monotonic() < deadline:
        spared = set(spare) | before
        layer = []
        for pid in own_children() - spared:
            try:
                if os.getsid(pid) != own_session:
                    layer.append(pid)
            except ProcessLookupError:
                pass
        if not layer:
            break
        _signal(layer, signal.SIGKILL)
        for pid in layer:  # their children are ours now; the next pass finds them
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        killed += len(layer)
    return killed
