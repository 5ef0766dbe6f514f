"""A pool of sandboxed worker processes that call one user function, each call bounded in time.

:class:`SandboxPool` starts ``size`` processes (:mod:`.child`), each walled in and holding the user's
code loaded once. :meth:`SandboxPool.map` hands a list of calls to the pool - at most one call per
worker at a time - and returns one :class:`Outcome` per call, in the order of the calls: ``ok``,
``raised``, ``timeout`` or ``invalid``. A call still running at its deadline is ended by killing its
worker's whole process group (a thread could not be stopped); a worker that dies or times out is
replaced before its next call, so one bad call costs one call, never the pool.

Nothing a worker prints reaches a disk: its stdout and stderr go to a pipe whose last
``Limits.output_kb`` kilobytes are kept (:class:`OutputTail`) and attached to faulted calls.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from . import channel
from .limits import Limits, SERVICE_ACCOUNT_DIRS, cache_dirs, sandbox_env
from .reap import kill_tree
from .values import from_plain

__all__ = ["SandboxPool", "Outcome", "SandboxStartError", "default_read_paths", "available_cores"]

logger = logging.getLogger(__name__)

# /proc is not among them: /proc/<pid>/environ of the worker's other processes (same uid) holds the
# secrets the sandbox's own environment is stripped of. The sandboxed process reads its own /proc/<pid>
# and a few system-wide files (:data:`.child.PROC_READ`).
_SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/sys", "/dev")


class SandboxStartError(RuntimeError):
    """A sandbox worker could not start or could not load the user's code; the message says why."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; the cgroup's quota is not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_read_paths(extra: Sequence[str] = ()) -> list[str]:
    """What sandboxed code may read: system directories, this Python and its packages, and ``extra``.

    The service-account token directories are never included (neither is ``/var``, ``/run``,
    ``/home``, ``/root`` or ``/proc``), so a token mounted there, or another process's environment,
    stays unreadable once Landlock holds."""
    paths = list(_SYSTEM_READ) + [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    paths += [_package_root(name) for name in ("rlhf_workers", "rlhf_api")]  # editable installs are not on sys.path
    paths += cache_dirs()  # model caches named by HF_HOME & co: read-only
    paths += [str(p) for p in extra]
    real = []
    for path in dict.fromkeys(paths):
        if any(path == d or path.startswith(d + "/") for d in (*SERVICE_ACCOUNT_DIRS, "/proc")):
            continue
        real.append(path)
        resolved = os.path.realpath(path)
        if resolved != path:  # Landlock rules follow the real inode
            real.append(resolved)
    return list(dict.fromkeys(real))


def _package_root(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else "/"


@dataclass
class Outcome:
    """How one call ended. ``error`` (for faults): ``type``, ``message``, ``traceback``, ``line``."""

    status: str  #: ok | raised | timeout | invalid
    value: Any = None
    error: dict = field(default_factory=dict)
    output: str = ""  #: the tail of what the worker printed (faults only)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class OutputTail:
    """Drains a worker's stdout+stderr pipe on a thread, keeping only the last ``limit`` bytes."""

    def __init__(self, stream, limit: int):
        self.limit, self.dropped = max(1024, limit), 0
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True, name="sandbox-output")
        self._thread.start()

    def _drain(self, stream) -> None:
        try:
            for chunk in iter(lambda: stream.read1(65536), b""):
                with self._lock:
                    self._buffer += chunk
                    excess = len(self._buffer) - self.limit
                    if excess > 0:
                        del self._buffer[:excess]
                        self.dropped += excess
        except (OSError, ValueError):  # the pipe was closed under us: the worker is gone
            pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def take(self) -> str:
        """The output kept since the last take, and a note of how much was dropped."""
        with self._lock:
            text, dropped = self._buffer.decode(errors="replace"), self.dropped
            self._buffer.clear()
            self.dropped = 0
        return (f"[{dropped} earlier bytes of output dropped]\n" if dropped else "") + text


class _Worker:
    """One sandboxed process: spawned, ready, busy with one call, or dead."""

    module = "rlhf_workers.sandbox.child"  #: what the process runs (``python -m MODULE REQUEST_FD REPLY_FD``)

    def __init__(self, config: dict, limits: Limits, scratch_root: Optional[str]):
        self.config, self.limits, self.scratch_root = config, limits, scratch_root
        self.proc: Optional[subprocess.Popen] = None
        self.state = "dead"
        self.call_index: Optional[int] = None
        self.deadline = 0.0
        self.started_call = 0.0
        self.report: dict = {}

    def spawn(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="rlhf-sandbox-", dir=self.scratch_root)
        os.chmod(self.scratch, 0o700)
        request_r, self.request_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        config = {**self.config, "write_paths": [self.scratch, "/dev/null", *self.config.get("write_paths", ())]}
        env = sandbox_env(self.scratch, extra=self.config.get("env"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, str(request_r), str(reply_w)],
                pass_fds=(request_r, reply_w), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, cwd=self.scratch, start_new_session=True)
        finally:
            os.close(request_r)
            os.close(reply_w)
        self.output = OutputTail(self.proc.stdout, self.limits.output_kb * 1024)
        self.reader = channel.FrameReader()
        channel.send(self.request_w, config)
        self.state = "starting"

    def wait_ready(self, timeout: float) -> None:
        """Block until the worker has loaded the code; raises :class:`SandboxStartError` otherwise."""
        deadline = time.monotonic() + timeout
        while self.state == "starting":
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise SandboxStartError(f"the sandboxed code did not load within {timeout:.0f}s")
            select.select([self.reply_r], [], [], left)
            for kind, payload in self.read():
                if kind == "ready":
                    self.state, self.report = "idle", payload
                elif kind == "load_failed":
                    self.kill()
                    raise SandboxStartError(str(payload))
            if self.state == "dead":
                raise SandboxStartError(f"the sandbox process ended while loading the code ({self.ended()})\n"
                                        f"{self.output.take()[-4000:]}")

    def read(self) -> list:
        """Frames waiting on the reply pipe ([] if none); on end of file or garbage the worker is dead."""
        if self.reply_r is None:
            return []
        try:
            chunk = os.read(self.reply_r, 1 << 20) if select.select([self.reply_r], [], [], 0)[0] else None
        except OSError:
            chunk = b""
        if chunk is None:
            return []
        if not chunk:
            self._reap()
            return []
        try:
            return self.reader.feed(chunk)
        except channel.FrameError as exc:
            self.kill()
            return [["invalid", f"the sandbox sent {exc}"]]

    def call(self, index: int, args: tuple, timeout: float) -> bool:
        """Send one call; False (nothing sent) when the worker died while idle."""
        if self.proc.poll() is not None:
            self._close()
            return False
        self.output.take()
        self.call_index, self.state = index, "busy"
        self.started_call = time.monotonic()
        self.deadline = self.started_call + timeout
        try:
            channel.send(self.request_w, args)
        except OSError:  # died just now: the outcome is read as a death during the call
            self._reap()
        return True

    def ended(self) -> str:
        code = self.proc.poll() if self.proc else None
        if code is None:
            return "still running"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            hint = {"SIGXCPU": " (its CPU-time limit)", "SIGKILL": " (killed: memory, or the pool)",
                    "SIGXFSZ": " (its file-size limit)"}.get(name, "")
            return f"killed by {name}{hint}"
        return f"exit code {code}"

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._close()

    def kill(self) -> None:
        """End the worker and everything it started: its descendants first, found through /proc and
        frozen until none is left (those that left its session too: it is their subreaper), then it."""
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.state == "dead" and self.proc is None:
            return
        for fd in (getattr(self, "request_w", None), getattr(self, "reply_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.request_w = self.reply_r = None
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout is not None:
            self.output.join(timeout=1.0)  # the rest of its output, then the pipe is closed
            if not self.output.alive:  # else something the worker started still holds the pipe
                self.proc.stdout.close()
        self.state = "dead"
        if getattr(self, "scratch", None):
            shutil.rmtree(self.scratch, ignore_errors=True)


class SandboxPool:
    """``size`` sandboxed processes serving calls of one function (see the module docstring).

    Args:
        target: what each worker loads: ``{"kind": "reward_func", "path": FILE}`` or
            ``{"kind": "callable", "callable": "module:name"}``.
        size: number of worker processes (default: the cores this process may use).
        timeout: wall-clock seconds one call may take.
        limits: per-process limits.
        read_paths: more paths the code may read (beyond :func:`default_read_paths`).
        write_paths: directories the code may write besides its scratch directory.
        network: let the code use the network (default: no).
        landlock: confine the file system with Landlock where the kernel has it.
        start_timeout: seconds a worker may take to load the code (default: ``timeout + 60``).
    """

    def __init__(self, target: dict, *, size: Optional[int] = None, timeout: float = 60.0,
                 limits: Optional[Limits] = None, read_paths: Sequence[str] = (), write_paths: Sequence[str] = (),
                 network: bool = False,
                 landlock: bool = True, start_timeout: Optional[float] = None, scratch_root: Optional[str] = None,
                 env: Optional[dict] = None):
        self.size = max(1, size or available_cores())
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout if start_timeout is not None else self.timeout + 60.0)
        self.limits = limits or Limits()
        extra = list(read_paths) + ([os.path.dirname(os.path.abspath(target["path"]))] if target.get("path") else [])
        config = {"target": target, "limits": self.limits.to_dict(), "read_paths": default_read_paths(extra),
                  "write_paths": list(write_paths),
                  "network": network, "landlock": landlock, "env": dict(env or {})}
        self._workers = [_Worker(config, self.limits, scratch_root) for _ in range(self.size)]
        self.replaced = 0

    def start(self) -> dict:
        """Start every worker (in parallel) and wait until each has loaded the code; the containment report."""
        try:
            for w in self._workers:
                w.spawn()
            for w in self._workers:
                w.wait_ready(self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self.report

    @property
    def report(self) -> dict:
        """What the walls of the first ready worker hold (``rlimits``, ``network``, ``filesystem``)."""
        return next((w.report for w in self._workers if w.report), {})

    def map(self, calls: Sequence[tuple]) -> list[Outcome]:
        """Run ``calls`` (argument tuples) across the pool; one :class:`Outcome` per call, in order."""
        results: list[Optional[Outcome]] = [None] * len(calls)
        queue = deque(range(len(calls)))
        while queue or any(w.call_index is not None for w in self._workers):
            for w in self._workers:
                if queue and w.state == "dead":
                    self._replace(w, queue, results)
                if queue and w.state == "idle":
                    i = queue.popleft()
                    if not w.call(i, tuple(calls[i]), self.timeout):
                        queue.appendleft(i)  # died while idle: replaced on the next turn
            busy = [w for w in self._workers if w.call_index is not None]
            if busy:
                wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                select.select([w.reply_r for w in busy if w.reply_r is not None], [], [], wait)
            for w in busy:
                self._collect(w, results)
        return results  # type: ignore[return-value]

    def _replace(self, w: _Worker, queue: deque, results: list) -> None:
        self.replaced += 1
        try:
            w.spawn()
            w.wait_ready(self.start_timeout)
        except SandboxStartError as exc:  # the code loaded before: fail the next call, not the pool
            i = queue.popleft()
            results[i] = Outcome("raised", error={"type": "SandboxStartError", "message": str(exc)[:2000]})

    def _collect(self, w: _Worker, results: list) -> None:
        i = w.call_index
        for kind, payload in w.read():
            outcome = Outcome(kind, seconds=time.monotonic() - w.started_call)
            if kind == "ok":
                try:
                    outcome.value = from_plain(payload)
                except (ValueError, TypeError, KeyError, OverflowError) as exc:
                    outcome.status, outcome.error = "invalid", {"type": "InvalidOutput", "message": str(exc)[:500]}
            elif kind == "raised":
                outcome.error = payload
            else:
                outcome.error = {"type": "InvalidOutput", "message": str(payload)}
            if outcome.status != "ok":
                outcome.output = w.output.take()[-8000:]
            results[i] = outcome
            w.call_index = None
            if w.state == "busy":
                w.state = "idle"
            return
        if w.state == "dead":  # died during the call
            results[i] = Outcome("raised", error={"type": "SandboxDied", "message":
                                 f"the reward process died during the call ({w.ended()})"},
                                 output=w.output.take()[-8000:], seconds=time.monotonic() - w.started_call)
            w.call_index = None
        elif time.monotonic() >= w.deadline:
            w.kill()
            results[i] = Outcome("timeout", error={"type": "Timeout", "message":
                                 f"the call did not end within {self.timeout:g}s and was killed"},
                                 output=w.output.take()[-8000:], seconds=time.monotonic() - w.started_call)
            w.call_index = None

    def close(self) -> None:
        for w in self._workers:
            w.kill()

    def __enter__(self) -> "SandboxPool":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self):  # a pool dropped without close() must not leave processes behind
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
