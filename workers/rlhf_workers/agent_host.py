"""An agent's sandboxed process: ``python -m rlhf_workers.agent_host REQUEST_FD REPLY_FD``.

It is walled in exactly as a reward's sandboxed process (:func:`rlhf_workers.sandbox.child.contain`:
rlimits, no network, read-only file system outside its scratch directory, stripped environment),
then loads the agent file - the user's code is never imported by the driver - and runs many
episodes at once on one event loop. Each episode is the user's ``AgentExecutor.execute`` (or the
base one), unchanged; its ``llm_engine.generate`` sends the tokens to the parent, which batches the
requests of every process for the rollout engines and sends the completion back.

Down frames (parent to host, pickles; the parent is trusted):

* ``["episode", eid, prompt, label, params]`` - run one episode (``params``: the sampling fields);
* ``["generated", rid, completion]`` / ``["generate_failed", rid, message]`` - a generate request's answer;
* ``["call", eid, method, states]`` - ``reset`` or ``step`` of instance ``eid`` (made on first use;
  the code check's way in, no engine needed); ``["end", eid]`` forgets it.

Up frames (JSON, never pickles): ``["ready", report]`` or ``["load_failed", {message, line}]``;
``["generate", eid, rid, token_ids, params]``; ``["done", eid, episode]``, ``["result", eid, value]``
or ``["fault", eid, {kind, type, message, traceback, line}]``; ``["tainted", message]`` when a call
given up at its timeout still runs on its thread (the parent sends no more episodes and retires
the process once its episodes end); ``["blocking", eid, seconds]`` when episode ``eid``'s code has kept
the event loop from running for longer than the timeout (the parent ends the process).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
import types
from typing import Any, Optional

from .agent import (AgentError, AgentExecutorBase, AgentTimeout, _check_step, _Completion, _Logprob, _RequestOutput,
                    abandoned_calls, bounded, load_agent, new_instance, sampling_fields)
from .sandbox import channel
from .sandbox.child import _fault, contain, refuse_process_exit
from .sandbox.limits import Limits, set_call_cpu_limit
from .sandbox.values import NotPlain, to_plain

__all__ = ["main", "EPISODE_KEYS"]

#: What an episode returns to the parent (the base ``execute``'s dict; a custom one must give these).
EPISODE_KEYS = ("observation_tokens", "prompt_length", "action_mask", "rollout_log_probs", "reward", "scores",
                "extra_logs", "steps")


class _Engine:
    """The ``llm_engine`` an episode sees: ``await generate(token_ids, sampling_params)``."""

    def __init__(self, host: "AgentHost", eid: int):
        self.host, self.eid = host, eid

    async def generate(self, prompt_token_ids, sampling_params):
        ids = [int(t) for t in prompt_token_ids]
        reply = await self.host.request(self.eid, ids, sampling_fields(sampling_params))
        tokens = [int(t) for t in reply["token_ids"]]
        text = reply.get("text")
        if text is None:
            text = self.host.tokenizer.decode(tokens, skip_special_tokens=True)
        logprobs = [{t: _Logprob(float(lp))} for t, lp in zip(tokens, reply["logprobs"])]
        return _RequestOutput(ids, [_Completion(tokens, text, logprobs, reply.get("finish_reason", "length"))])


class AgentHost:
    """The loaded agent file and the episodes and instances it runs (see the module docstring)."""

    def __init__(self, config: dict, reply_fd: int):
        agent = config["agent"]
        self.path, self.reply_fd = config["target"]["path"], reply_fd
        self.tokenizer = agent.get("tokenizer")
        self.max_steps, self.max_length = int(agent["max_steps"]), int(agent["max_length"])
        self.timeout: Optional[float] = agent.get("timeout")
        self.limits = Limits(**config["limits"])
        self.executor_cls, self.instance_cls = load_agent(self.path)
        self.instances: dict[int, Any] = {}
        self.pending: dict[int, asyncio.Future] = {}
        self._rids = itertools.count()
        self._tainted = 0
        self._sending = threading.Lock()
        self.task_eids: dict[asyncio.Task, int] = {}  #: which episode each running task belongs to
        self.beat = time.monotonic()  #: the last time the event loop ran its heartbeat

    def send(self, frame: list) -> None:
        with self._sending:  # the watchdog thread writes too
            channel.send(self.reply_fd, frame, as_json=True)

    def executor(self, eid: int):
        engine = _Engine(self, eid)
        if self.executor_cls is not None:
            executor = self.executor_cls(self.max_steps, self.max_length, engine, self.tokenizer, None)
        else:
            executor = AgentExecutorBase(self.instance_cls, self.max_steps, self.max_length, engine, self.tokenizer, None)
        executor.call_timeout = self.timeout
        return executor

    async def request(self, eid: int, ids: list[int], params: dict) -> dict:
        rid = next(self._rids)
        future = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        self.send(["generate", eid, rid, ids, params])
        return await future

    # ------------------------------------------------------------------ frames from the parent

    def dispatch(self, frame: list) -> None:
        kind = frame[0]
        set_call_cpu_limit(self.limits)  # CPU seconds are granted per message, not for the process's life
        if kind == "episode":
            self._spawn(frame[1], self.episode(*frame[1:]))
        elif kind == "call":
            self._spawn(frame[1], self.call(*frame[1:]))
        elif kind == "end":
            self.instances.pop(frame[1], None)
        elif kind in ("generated", "generate_failed"):
            future = self.pending.pop(frame[1], None)
            if future is not None and not future.done():
                if kind == "generated":
                    future.set_result(frame[2])
                else:
                    future.set_exception(RuntimeError(f"the rollout engines failed: {frame[2]}"))

    def _spawn(self, eid: int, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.task_eids[task] = eid
        task.add_done_callback(lambda t: self.task_eids.pop(t, None))

    def watch_the_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the episode whose code keeps the event loop from running for longer than the timeout
        (a synchronous hang outside the bounded calls); the parent then ends this process."""
        def beat() -> None:
            self.beat = time.monotonic()
            loop.call_later(0.1, beat)

        def watch() -> None:
            while True:
                time.sleep(0.1)
                stalled = time.monotonic() - self.beat
                if stalled > self.timeout:
                    eid = self.task_eids.get(asyncio.current_task(loop))
                    self.send(["blocking", eid, round(stalled, 1)])
                    return

        beat()
        threading.Thread(target=watch, daemon=True, name="agent-loop-watch").start()

    def _report_fault(self, eid: int, exc: BaseException) -> None:
        kind = "timeout" if isinstance(exc, AgentTimeout) else "invalid" if isinstance(exc, AgentError) else "raised"
        info = _fault(exc, self.path)
        if kind != "raised" and not str(info["line"] or "").startswith(self.path):
            info["line"] = None  # the check that found it, not the user's code
        self.send(["fault", eid, {"kind": kind, **info}])
        stuck = abandoned_calls()
        if stuck > self._tainted:
            self._tainted = stuck
            self.send(["tainted", f"{stuck} call(s) given up at the timeout still run in this process"])

    async def episode(self, eid: int, prompt: str, label: Any, params: dict) -> None:
        try:
            episode = await self.executor(eid).execute(prompt, label, types.SimpleNamespace(n=1, logprobs=0, **params))
            plain = _episode_plain(episode)
        except BaseException as exc:  # noqa: BLE001 - user code: a fault of this episode
            self._report_fault(eid, exc)
            return
        self.send(["done", eid, plain])

    async def call(self, eid: int, method: str, states: dict) -> None:
        try:
            instance = self.instances.get(eid)
            if instance is None:
                cls = self.instance_cls or self.executor(eid).agent_instance_cls
                instance = self.instances[eid] = await new_instance(cls, timeout=self.timeout)
            value = await bounded(getattr(instance, method), states, timeout=self.timeout, what=method)
            if method == "step":
                reward, done, feedback = _check_step(value)
                value = {"rewards": reward, "done": done, "environment_feedback": feedback}
            elif not isinstance(value, dict):
                raise AgentError(f"AgentInstance.reset returned a {type(value).__name__}; it must return a dict "
                                 "with the observation")
            plain = to_plain(value)
        except BaseException as exc:  # noqa: BLE001 - user code
            if isinstance(exc, NotPlain):
                exc = AgentError(f"AgentInstance.{method} returned a value that cannot be read: {exc}")
            self._report_fault(eid, exc)
            return
        self.send(["result", eid, plain])

    async def serve(self, request_fd: int) -> None:
        """Read frames until the parent closes the request pipe."""
        loop = asyncio.get_running_loop()
        reader, closed = channel.FrameReader(trusted=True), loop.create_future()
        os.set_blocking(request_fd, False)

        def readable() -> None:
            try:
                chunk = os.read(request_fd, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                loop.remove_reader(request_fd)
                if not closed.done():
                    closed.set_result(None)
                return
            for frame in reader.feed(chunk):
                self.dispatch(frame)

        loop.add_reader(request_fd, readable)
        if self.timeout is not None:
            self.watch_the_loop(loop)
        await closed


def _episode_plain(episode: Any) -> Any:
    """An episode as JSON-able data; a custom ``execute`` that returns something else breaks the contract."""
    if not isinstance(episode, dict) or any(k not in episode for k in EPISODE_KEYS):
        missing = [k for k in EPISODE_KEYS if not isinstance(episode, dict) or k not in episode]
        raise AgentError(f"AgentExecutor.execute returned {type(episode).__name__} without {', '.join(missing)}; "
                         "return what AgentExecutorBase.execute returns (await super().execute(...))")
    kept = {k: episode[k] for k in (*EPISODE_KEYS, "out_of_tokens")}
    logs = {}
    for key, value in (kept.get("extra_logs") or {}).items():
        try:  # extra logs that are not numbers, strings or tensors are not metrics: left out
            logs[str(key)] = to_plain(value)
        except (NotPlain, ValueError):
            continue
    kept["extra_logs"] = logs
    return to_plain(kept)


def _load_failure(exc: BaseException, path: str) -> str:
    """Why the file did not load: the first line of the error and, when the user's code raised, where."""
    cause = exc.__cause__ if exc.__cause__ is not None else None if isinstance(exc, AgentError) else exc
    line = _fault(cause, path)["line"] if cause is not None else None
    return str(exc).split("\n")[0][:2000] + (f" (at {line})" if line else "")


def main(argv: list[str]) -> int:
    request_fd, reply_fd = int(argv[1]), int(argv[2])
    config = channel.recv_blocking(request_fd)
    if config is None:
        return 1
    report = contain(config)
    for fd in (request_fd, reply_fd):  # what the user's code starts does not get the pipes
        os.set_inheritable(fd, False)
    refuse_process_exit()
    try:
        host = AgentHost(config, reply_fd)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises AgentError
        channel.send(reply_fd, ["load_failed", _load_failure(exc, config["target"]["path"])], as_json=True)
        return 1
    report["agent"] = {"executor": getattr(host.executor_cls, "__name__", None),
                       "instance": getattr(host.instance_cls, "__name__", None)}
    channel.send(reply_fd, ["ready", report], as_json=True)
    asyncio.run(host.serve(request_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
