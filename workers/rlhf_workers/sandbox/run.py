"""Run generated code with limits of its own: :func:`run_python` and :func:`run_command`.

For rewards that execute model-written programs (the seed's code-generation example): each run
gets a fresh directory, its own wall-clock timeout (at it, or when the program exits, its process
group is killed, and so is whatever left the group: see :mod:`.reap`), its own rlimits (tighter
than the reward's, never looser: an unprivileged process cannot raise a hard limit), bounded
stdout/stderr, and comes back as a :class:`RunResult` saying how it ended. Inside
a training job the reward itself already runs in the sandbox, so what it starts also has no
network and a read-only file system outside scratch (those walls are inherited); called
elsewhere, only the limits and the timeout apply.

The wait is one thread with no polling delay: the program's output, its input and its end
(a pidfd) are watched together, so a run costs little more than a bare ``subprocess.run``.

The limits are set between start and exec by util-linux's ``prlimit`` (one small exec, and the
program starts with ``posix_spawn``); without it, by ``preexec_fn`` when the caller is
single-threaded (a sandboxed reward is), else by a tiny launcher (``python -S -c``, no imports
beyond ``resource``), because ``preexec_fn`` is unsafe in a process with threads.
"""

from __future__ import annotations

import functools
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from . import reap
from .limits import Limits, sandbox_env

__all__ = ["RunResult", "run_command", "run_python"]

_LAUNCHER = (
    "import os, resource, sys\n"
    "for name, soft, hard in eval(sys.argv[1]):\n"
    "    which = getattr(resource, name)\n"
    "    ceiling = resource.getrlimit(which)[1]\n"
    "    if ceiling != resource.RLIM_INFINITY:\n"
    "        soft, hard = min(soft, ceiling), min(hard, ceiling)\n"
    "    resource.setrlimit(which, (soft, hard))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@dataclass
class RunResult:
    """How a run ended.

    Attributes:
        status: ``exited`` (any exit code), ``timeout`` (killed at the timeout), ``killed`` (ended by a
            signal: a limit or a crash) or ``error`` (could not be started).
        exit_code: the exit code when it exited.
        signal: the signal's name when it was killed (``SIGKILL``, ``SIGXCPU``, ``SIGSEGV`` ...).
        stdout, stderr: what it printed, each cut to ``Limits.output_kb`` (the rest is dropped).
        reason: the same in words, for logs and messages.
        seconds: wall-clock time.
    """

    status: str
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    stdout: str = ""
    stderr: str = ""
    reason: str = ""
    seconds: float = 0.0
    truncated: bool = field(default=False, repr=False)

    @property
    def ok(self) -> bool:
        """Exited with code 0."""
        return self.status == "exited" and self.exit_code == 0


def _rlimits(limits: Limits, timeout: float) -> list[tuple[str, int, int]]:
    """(name, soft, hard) per limit; CPU gets a second of grace so the program sees SIGXCPU, not SIGKILL."""
    mb = 1024 * 1024
    cpu = int(limits.cpu_seconds) + 1 if limits.cpu_seconds else int(timeout) + 2
    triples = [("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_CORE", 0, 0)]
    for name, value in (("RLIMIT_AS", limits.memory_mb * mb), ("RLIMIT_NPROC", limits.max_processes),
                        ("RLIMIT_FSIZE", limits.file_size_mb * mb), ("RLIMIT_NOFILE", limits.open_files)):
        if value:
            triples.append((name, int(value), int(value)))
    return triples


_PRLIMIT = shutil.which("prlimit")
_PRLIMIT_NAMES = {"RLIMIT_CPU": "cpu", "RLIMIT_CORE": "core", "RLIMIT_AS": "as", "RLIMIT_NPROC": "nproc",
                  "RLIMIT_FSIZE": "fsize", "RLIMIT_NOFILE": "nofile"}


def _prlimit_flags(triples: list[tuple[str, int, int]]) -> list[str]:
    """``--as=SOFT:HARD`` ... never above the hard limits this process has (prlimit would refuse)."""
    import resource

    flags = []
    for name, soft, hard in triples:
        ceiling = resource.getrlimit(getattr(resource, name))[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        flags.append(f"--{_PRLIMIT_NAMES[name]}={soft}:{hard}")
    return flags


def _apply(triples: list[tuple[str, int, int]]) -> None:
    """In the forked child, before exec: the limits (never above the hard limits the caller has)."""
    import resource

    for name, soft, hard in triples:
        which = getattr(resource, name)
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))


class _Tail:
    """The first ``limit`` bytes of one stream; the rest counted and dropped."""

    def __init__(self, limit: int):
        self.kept, self.limit, self.dropped = bytearray(), limit, 0

    def add(self, chunk: bytes) -> None:
        room = max(0, self.limit - len(self.kept))
        self.kept += chunk[:room]
        self.dropped += len(chunk) - len(chunk[:room])

    def text(self) -> str:
        return self.kept.decode(errors="replace")


_RUNS: set[int] = set()  # pids of the runs going on in this process (threads may run several at once)
_RUNS_LOCK = threading.Lock()


def run_command(argv: Sequence[str], *, timeout: float = 10.0, limits: Optional[Limits] = None,
                cwd: Optional[str] = None, input: Optional[str] = None, files: Optional[Mapping[str, str]] = None,
                env: Optional[Mapping[str, str]] = None) -> RunResult:
    """Run ``argv`` with ``limits`` and a ``timeout``; never raises for what the program does.

    ``files`` (name -> text) are written into the run's fresh directory (``cwd`` when given,
    else a temporary one removed afterwards). ``env`` adds variables to the stripped environment.
    When the run ends, whatever it started is ended too, including processes that left its
    session (:mod:`.reap`; the calling process becomes a child subreaper for that).
    """
    limits = limits or Limits(cpu_seconds=timeout, memory_mb=1024, max_processes=64, file_size_mb=16, output_kb=64)
    with tempfile.TemporaryDirectory(prefix="rlhf-run-") as scratch:
        workdir = cwd or scratch
        for name, text in (files or {}).items():
            path = os.path.join(workdir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        triples = _rlimits(limits, timeout)
        if _PRLIMIT:
            command, preexec = [_PRLIMIT, *_prlimit_flags(triples), "--", *argv], None
        elif threading.active_count() == 1:
            command, preexec = list(argv), functools.partial(_apply, triples)
        else:
            command, preexec = [sys.executable, "-S", "-c", _LAUNCHER, repr(triples), *argv], None
        reap.become_subreaper()  # what leaves the run's session is re-parented here, not lost to init
        started = time.monotonic()
        with _RUNS_LOCK:  # another thread's sweep must not take this run for an orphan
            before = reap.own_children()
            try:
                proc = subprocess.Popen(command, preexec_fn=preexec, cwd=workdir, start_new_session=True,
                                        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=sandbox_env(workdir, extra=env))
            except OSError as exc:
                return RunResult("error", reason=f"could not start {argv[0]!r}: {exc}")
            _RUNS.add(proc.pid)
        try:
            return _wait(proc, input, timeout, limits.output_kb * 1024, started, before)
        finally:
            with _RUNS_LOCK:
                _RUNS.discard(proc.pid)


def _exit_watch(proc: subprocess.Popen) -> Optional[int]:
    """A file descriptor readable once ``proc`` has ended (a pidfd), or None where there is none."""
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return None


def _pump(proc: subprocess.Popen, input: Optional[str], deadline: float, tails: dict) -> bool:
    """Move bytes (input in, output out) until the program exits or the deadline; True if it exited.
    One thread, no polling delay: the wait ends the moment the program does (pidfd)."""
    pidfd = _exit_watch(proc)
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        sel.register(stream.fileno(), selectors.EVENT_READ, tails[stream.fileno()])
    pending = memoryview(input.encode()) if input is not None else None
    if pending is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, None)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, None)
    try:
        while True:
            left = deadline - time.monotonic()
            if proc.poll() is not None:
                return True
            if left <= 0:
                return False
            for key, _ in sel.select(left if pidfd is not None else min(left, 0.005)):
                if key.data is not None:  # output
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        key.data.add(chunk)
                    else:
                        sel.unregister(key.fd)
                elif key.fd != pidfd:  # stdin writable
                    pending = _feed(proc, sel, pending)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)


def _feed(proc: subprocess.Popen, sel: selectors.BaseSelector, pending: memoryview) -> Optional[memoryview]:
    try:
        pending = pending[os.write(proc.stdin.fileno(), pending[:65536]):]
    except BlockingIOError:
        return pending
    except OSError:  # the program closed its input
        pending = pending[:0]
    if not pending:
        sel.unregister(proc.stdin.fileno())
        proc.stdin.close()
    return pending


def _drain_rest(proc: subprocess.Popen, tails: dict, seconds: float = 1.0) -> None:
    """What is left in the output pipes once every writer is gone (bounded, should one survive)."""
    deadline = time.monotonic() + seconds
    open_fds = [s.fileno() for s in (proc.stdout, proc.stderr)]
    while open_fds and time.monotonic() < deadline:
        ready, _, _ = select.select(open_fds, [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                tails[fd].add(chunk)
            else:
                open_fds.remove(fd)


def _wait(proc: subprocess.Popen, input: Optional[str], timeout: float, limit: int, started: float,
          before: set[int]) -> RunResult:
    out, err = _Tail(limit), _Tail(limit)
    tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    exited = _pump(proc, input, started + timeout, tails)
    try:  # the whole group: what the program started goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    with _RUNS_LOCK:  # and what left the group (setsid, a double fork), re-parented to this process
        reap.sweep_adopted(before, spare=_RUNS)
    _drain_rest(proc, tails)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    result = RunResult("exited", stdout=out.text(), stderr=err.text(), seconds=time.monotonic() - started,
                       truncated=bool(out.dropped or err.dropped))
    code = proc.returncode
    if not exited:
        result.status, result.reason = "timeout", f"did not end within {timeout:g}s and was killed"
    elif code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        result.status, result.signal, result.reason = "killed", name, f"killed by {name}"
    else:
        result.exit_code, result.reason = code, f"exit code {code}"
    return result


def run_python(code: str, *, timeout: float = 10.0, limits: Optional[Limits] = None, args: Sequence[str] = (),
               files: Optional[Mapping[str, str]] = None, input: Optional[str] = None) -> RunResult:
    """Run a Python snippet (saved as ``main.py`` in the run's directory, next to ``files``) with this Python."""
    return run_command([sys.executable, "main.py", *args], timeout=timeout, limits=limits, input=input,
                       files={**(files or {}), "main.py": code})
