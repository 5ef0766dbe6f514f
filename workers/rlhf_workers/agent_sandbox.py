"""Agent code in sandboxed processes, seen from the driver.

:class:`AgentSandbox` starts ``size`` processes (:mod:`.agent_host`), each walled in as a reward's
sandbox and holding the agent file loaded once; the driver never imports the file. An episode runs
whole in one process (its ``AgentInstance`` keeps its state there); its generate requests come to
the driver, which batches those of every process for the rollout engines and answers.

Every episode ends as ``ok`` or as a fault (``raised``, ``timeout``, ``invalid``):

* inside the process each ``__init__``/``reset``/``step`` runs on a thread bounded by
  ``agent.timeoutSeconds``; a call given up there may still run, so that process gets no new
  episodes and is replaced once its episodes have ended;
* the driver watches each process too: one that holds an episode past ``2 x timeout + 10 s``
  without a word (code blocking its event loop: a synchronous hang in ``__init__`` or a custom
  ``execute``) is killed with everything it started; that episode is a timeout, the process's other
  episodes start again elsewhere (once);
* a process that dies (its memory limit, a crash) takes no episode down with it for good: the ones
  it was running user code for start again each in a process of its own (one that kills that one
  too is the culprit: a fault), the ones waiting for the engines start again anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Sequence

from .sandbox import channel
from .sandbox.limits import Limits
from .sandbox.pool import SandboxStartError, _Worker, available_cores, default_read_paths
from .sandbox.values import from_plain

__all__ = ["AgentSandbox", "EpisodeOutcome", "GRACE_SECONDS"]

logger = logging.getLogger(__name__)

#: What the driver adds to ``2 x agent.timeoutSeconds`` before it ends a silent process.
GRACE_SECONDS = 10.0

Generate = Callable[[list, dict], Awaitable[dict]]


@dataclass
class EpisodeOutcome:
    """How one episode (or one check call) ended. ``error`` (faults): kind, type, message, traceback, line."""

    status: str  #: ok | raised | timeout | invalid
    value: Any = None  #: the episode dict (or the call's result)
    error: dict = field(default_factory=dict)
    output: str = ""  #: the tail of what the process printed (faults only)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Host(_Worker):
    """One agent process and the episodes it holds."""

    module = "rlhf_workers.agent_host"

    def __init__(self, *args):
        super().__init__(*args)
        self.episodes: set[int] = set()
        self.retiring = False
        self.outbox = bytearray()
        self.watched: Optional[tuple[int, int]] = None  #: (reply, request) pipes the event loop watches


@dataclass
class _Episode:
    index: int
    host: Optional[_Host] = None
    attempt: int = 0
    handed: Optional[float] = None  #: since when the process runs user code for it (None: the driver holds it)
    suspect: bool = False  #: it was running code when its process died: it runs again alone, to find the culprit


def _died(message: str) -> dict:
    return {"kind": "raised", "type": "SandboxDied", "message": message, "traceback": "", "line": None}


class AgentSandbox:
    """``size`` sandboxed processes running episodes of one agent file (see the module docstring)."""

    def __init__(self, path: str, *, tokenizer: Any = None, max_steps: int = 1, max_length: int = 1024,
                 timeout: Optional[float] = 60.0, size: Optional[int] = None, limits: Optional[Limits] = None,
                 network: bool = False, read_paths: Sequence[str] = (), write_paths: Sequence[str] = (),
                 env: Optional[dict] = None, start_timeout: Optional[float] = None, grace: float = GRACE_SECONDS):
        self.path, self.timeout, self.grace = str(path), timeout, grace
        self.limits = limits or Limits()
        self.start_timeout = float(start_timeout if start_timeout is not None else (timeout or 60.0) + 60.0)
        extra = [*read_paths, os.path.dirname(os.path.abspath(path))]
        config = {"target": {"kind": "agent", "path": self.path}, "limits": self.limits.to_dict(),
                  "agent": {"tokenizer": tokenizer, "max_steps": max_steps, "max_length": max_length, "timeout": timeout},
                  "read_paths": default_read_paths(extra), "write_paths": list(write_paths), "network": network,
                  "landlock": True, "env": dict(env or {})}
        self.hosts = [_Host(config, self.limits, None) for _ in range(max(1, size or available_cores()))]
        self.replaced = 0
        self.report: dict = {}

    @property
    def budget(self) -> Optional[float]:
        """Seconds a process may hold an episode without a word before the driver ends it."""
        return None if self.timeout is None else 2 * self.timeout + self.grace

    def start(self) -> dict:
        """Start every process and wait until each has loaded the file; the containment report.

        Raises :class:`SandboxStartError` with the file's error (its first line, then the user's line)."""
        try:
            for h in self.hosts:
                h.spawn()
            for h in self.hosts:
                self._wait_ready(h)
        except BaseException:
            self.close()
            raise
        self.report = self.hosts[0].report
        return self.report

    def _wait_ready(self, h: _Host) -> None:
        h.wait_ready(self.start_timeout)

    def respawn(self, h: _Host) -> None:
        h.episodes, h.retiring, h.outbox = set(), False, bytearray()
        self.replaced += 1
        h.spawn()
        self._wait_ready(h)

    async def run_episodes(self, jobs: Sequence[tuple[str, Any, dict]], generate: Generate) -> list[EpisodeOutcome]:
        """One :class:`EpisodeOutcome` per ``(prompt, label, sampling fields)``, in order; ``generate(token_ids,
        fields)`` answers the episodes' engine requests (``{token_ids, logprobs, text, finish_reason}``)."""
        return await _Run(self, jobs, generate).go()

    def call(self, eid: int, method: str, states: dict) -> EpisodeOutcome:
        """``reset`` or ``step`` of instance ``eid`` in the first process, waited for (the code check's use)."""
        h = self.hosts[0]
        if h.state == "dead":
            self.respawn(h)
        channel.send(h.request_w, ["call", eid, method, states])
        deadline = time.monotonic() + (self.budget or 600.0)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                h.kill()
                return EpisodeOutcome("timeout", error={"kind": "timeout", "type": "Timeout", "line": None, "message":
                                      f"AgentInstance.{method} held its process for {self.budget:g}s; it was killed"})
            select.select([h.reply_r], [], [], left)
            for frame in h.read():
                if frame[0] == "blocking":
                    h.kill()
                    return EpisodeOutcome("timeout", error={"kind": "timeout", "type": "Timeout", "line": None, "message":
                                          f"AgentInstance.{method} blocked its process for over {self.timeout:g}s"})
                if frame[0] == "result":
                    return EpisodeOutcome("ok", value=from_plain(frame[2]))
                if frame[0] == "fault":
                    return EpisodeOutcome(frame[2]["kind"], error=frame[2], output=h.output.take()[-8000:])
            if h.state == "dead":
                return EpisodeOutcome("raised", error=_died(f"the agent process died during {method} ({h.ended()})"),
                                      output=h.output.take()[-8000:])

    def close(self) -> None:
        for h in self.hosts:
            h.kill()

    def __del__(self):  # a sandbox dropped without close() must not leave processes behind
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _Run:
    """One batch of episodes across the processes, on the caller's event loop."""

    def __init__(self, sandbox: AgentSandbox, jobs: Sequence[tuple[str, Any, dict]], generate: Generate):
        self.sb, self.jobs, self.generate = sandbox, list(jobs), generate
        self.results: list[Optional[EpisodeOutcome]] = [None] * len(self.jobs)
        self.eps = [_Episode(i) for i in range(len(self.jobs))]
        self.queue = deque(range(len(self.jobs)))
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def go(self) -> list[EpisodeOutcome]:
        try:
            for h in self.sb.hosts:
                self._watch(h)
            while any(r is None for r in self.results):
                self._dispatch()
                try:
                    await asyncio.wait_for(self.wake.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                self.wake.clear()
                self._check_silence()
        finally:
            for h in self.sb.hosts:
                self._unwatch(h)
            for task in self.tasks:
                task.cancel()
        return self.results  # type: ignore[return-value]

    # ------------------------------------------------------------------ processes

    def _watch(self, h: _Host) -> None:
        if h.state != "dead" and h.watched is None:
            os.set_blocking(h.request_w, False)
            h.watched = (h.reply_r, h.request_w)
            self.loop.add_reader(h.reply_r, self._readable, h)

    def _unwatch(self, h: _Host) -> None:
        if h.watched is not None:  # (the pipes may be closed already: the loop forgets them all the same)
            self.loop.remove_reader(h.watched[0])
            self.loop.remove_writer(h.watched[1])
            if h.request_w is not None:
                os.set_blocking(h.request_w, True)
            h.watched = None

    def _send(self, h: _Host, frame: list) -> None:
        h.outbox += channel.encode(frame)
        self._flush(h)

    def _flush(self, h: _Host) -> None:
        if h.request_w is None:
            return
        try:
            written = os.write(h.request_w, h.outbox) if h.outbox else 0
            del h.outbox[:written]
        except BlockingIOError:
            pass
        except OSError:  # the process is gone: its end of file says so
            h.outbox.clear()
        if h.outbox:  # a process that does not read cannot block the driver: the rest waits here
            self.loop.add_writer(h.request_w, self._flush, h)
        else:
            self.loop.remove_writer(h.request_w)

    def _readable(self, h: _Host) -> None:
        for frame in h.read():
            self._frame(h, frame)
        if h.state == "dead":
            self._unwatch(h)
            self._lost(h, overdue=set())
        self.wake.set()

    def _dispatch(self) -> None:
        """Hand queued episodes to the least loaded live processes; retire and replace processes."""
        for h in self.sb.hosts:
            if h.retiring and not h.episodes and h.state != "dead":
                self._unwatch(h)
                h.kill()
        while self.queue:
            if any(h.state == "dead" for h in self.sb.hosts) and not self._respawn_one():
                continue
            live = [h for h in self.sb.hosts if h.state != "dead" and not h.retiring
                    and not any(self.eps[i].suspect for i in h.episodes)]
            placeable = [i for i in self.queue if not self.eps[i].suspect or any(not h.episodes for h in live)]
            if not live or not placeable:
                return  # wait: every process is retiring, or the suspects need a process of their own
            ep = self.eps[placeable[0]]
            self.queue.remove(ep.index)
            h = min((h for h in live if not ep.suspect or not h.episodes), key=lambda h: len(h.episodes))
            ep.host, ep.handed = h, time.monotonic()
            ep.attempt += 1
            h.episodes.add(ep.index)
            prompt, label, params = self.jobs[ep.index]
            self._send(h, ["episode", ep.index, prompt, label, params])

    def _respawn_one(self) -> bool:
        """Start a dead process again; False when it fails (the next queued episode gets the error)."""
        h = next(h for h in self.sb.hosts if h.state == "dead")
        try:
            self.sb.respawn(h)
        except SandboxStartError as exc:  # it loaded before: fail one episode, not the run
            self._end(self.eps[self.queue.popleft()], EpisodeOutcome("raised", error={
                **_died(f"the agent process could not start again: {str(exc)[:1500]}"), "type": "SandboxStartError"}))
            return False
        self._watch(h)
        return True

    # ------------------------------------------------------------------ frames from the processes

    def _frame(self, h: _Host, frame: list) -> None:
        kind = frame[0]
        if kind == "tainted":
            logger.warning("agent process %s: %s; it gets no new episodes and is replaced", h.proc.pid, frame[1])
            h.retiring = True
            return
        if kind == "blocking":  # one episode's code holds the process's event loop: end the process
            logger.warning("agent process %s: episode %s kept its event loop busy for %ss; killing it",
                           h.proc.pid, frame[1], frame[2])
            self._unwatch(h)
            h.kill()
            self._lost(h, {frame[1]} & h.episodes)  # not known: its running episodes are suspects, as in a crash
            return
        if kind not in ("generate", "done", "fault") or not isinstance(frame[1], int) \
                or not 0 <= frame[1] < len(self.eps) or self.eps[frame[1]].host is not h:
            return  # about an episode this process no longer holds
        ep = self.eps[frame[1]]
        if kind == "generate":
            ep.handed = None
            task = self.loop.create_task(self._generate(h, ep, ep.attempt, frame[2], frame[3], frame[4]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "done":
            try:
                self._end(ep, EpisodeOutcome("ok", value=from_plain(frame[2])))
            except (ValueError, TypeError, KeyError) as exc:
                self._end(ep, EpisodeOutcome("invalid", error={"kind": "invalid", "type": "InvalidOutput",
                                                               "message": str(exc)[:500], "line": None}))
        else:
            error = frame[2] if isinstance(frame[2], dict) else {"kind": "invalid", "message": str(frame[2])}
            self._end(ep, EpisodeOutcome(str(error.get("kind", "raised")), error=error, output=h.output.take()[-8000:]))

    async def _generate(self, h: _Host, ep: _Episode, attempt: int, rid: int, ids: list, params: dict) -> None:
        try:
            reply = ["generated", rid, await self.generate(ids, params)]
        except Exception as exc:  # noqa: BLE001 - the episode sees the engines' error
            reply = ["generate_failed", rid, f"{type(exc).__name__}: {exc}"[:2000]]
        if ep.host is h and ep.attempt == attempt and self.results[ep.index] is None and h.state != "dead":
            ep.handed = time.monotonic()
            self._send(h, reply)

    def _end(self, ep: _Episode, outcome: EpisodeOutcome) -> None:
        self.results[ep.index] = outcome
        if ep.host is not None:
            ep.host.episodes.discard(ep.index)
        ep.handed = None

    # ------------------------------------------------------------------ silence and death

    def _check_silence(self) -> None:
        budget, now = self.sb.budget, time.monotonic()
        if budget is None:
            return
        for h in self.sb.hosts:
            overdue = {i for i in h.episodes if self.eps[i].handed is not None and now - self.eps[i].handed > budget}
            if overdue:
                logger.warning("agent process %s held episode(s) %s for over %.0fs without a word; killing it",
                               h.proc.pid, sorted(overdue), budget)
                self._unwatch(h)
                h.kill()
                self._lost(h, overdue)

    def _lost(self, h: _Host, overdue: set[int]) -> None:
        """The process ``h`` ended. ``overdue``: the episodes that blocked it (timeouts); with none known, the
        episodes it was running code for are suspects, each run again alone (a fault only if it dies alone
        too); the rest start again anywhere."""
        how = h.ended() if h.proc is not None else "ended"
        for i in sorted(h.episodes):
            ep = self.eps[i]
            if i in overdue:
                self._end(ep, EpisodeOutcome("timeout", error={
                    "kind": "timeout", "type": "Timeout", "line": None, "message":
                    f"this episode's code held its agent process for over {self.sb.timeout:g}s without returning (a "
                    "call that blocks the event loop, which a thread's timeout cannot interrupt); the process was killed"}))
            elif ep.handed is not None and not overdue and (ep.suspect or ep.attempt >= 3):
                alone = ", with this episode alone in it" if ep.suspect else ""
                self._end(ep, EpisodeOutcome("raised", error=_died(f"the agent process died during the episode ({how})"
                                                                   f"{alone}"),
                                             output=h.output.take()[-8000:]))
            elif ep.handed is not None and not overdue:  # one of these killed it: each runs again alone
                ep.suspect, ep.host, ep.handed = True, None, None
                self.queue.append(i)
            elif ep.attempt >= 3:
                self._end(ep, EpisodeOutcome("raised", error=_died(f"the episode lost its agent process three times ({how})")))
            else:
                ep.host, ep.handed = None, None
                self.queue.append(i)
        h.episodes.clear()
