"""Multi-step agents with OpenRLHF's agent API (``spec.agent``, OpenRLHF ``--agent_func_path``).

An agent file defines ``AgentInstance(AgentInstanceBase)`` - the state of one episode, with
``reset(states)`` and ``step(states)`` - and usually ``AgentExecutor(AgentExecutorBase)``,
constructed as ``AgentExecutor(max_steps, max_length, llm_engine, hf_tokenizer, result_queue)``
and driven through ``await executor.execute(prompt, label, sampling_params)``. Files written for
OpenRLHF import ``from openrlhf.utils.agent import AgentExecutorBase, AgentInstanceBase``; that
module name is mapped to this one, so they load unchanged.

An episode, token in and token out: the prompt is tokenized once; each turn the engine
continues the token sequence (the *action*, trained on), ``step`` scores it and returns
``environment_feedback`` text whose tokens are appended but masked out of the loss; the episode
ends when ``step`` says ``done``, after ``agent.maxSteps`` turns, or when ``prompt_max_len +
max_new_tokens`` tokens are used. The episode's reward is the sum of its steps' ``rewards``;
its score (for dynamic filtering) is the last step's ``scores`` (default: the reward);
``extra_logs`` of the last step become metrics.

``step`` must return a dict with ``rewards`` (a number or one-element tensor),
``environment_feedback`` (str) and ``done`` (bool).

Faults are counted, not fatal (``spec.agent``'s fault policy, as for rewards): an episode whose
``__init__``/``reset``/``step`` raises is a ``raised`` fault, one whose ``step`` breaks the contract an
``invalid`` fault, and one whose call takes longer than ``agent.timeoutSeconds`` a ``timeout`` fault.
Each call runs on a thread of its own with its own event loop (:func:`bounded`), so even a blocking
hang (``time.sleep`` in an ``async def``) ends at the timeout: the thread is abandoned, the episode
is not. The faulted episode becomes a sample with the prompt and one masked token, dropped
(``onError: skip``) or given ``fallbackReward``; the run stops past ``maxErrorRate``.

The agent file is never imported by the driver: :class:`AgentRunner` runs the episodes in sandboxed
processes (:mod:`.agent_sandbox`, :mod:`.agent_host`); the ``llm_engine`` the episodes see there
sends the tokens back to the driver's :class:`EngineClient`, which batches the requests that are
ready together for the rollout engines.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import inspect
import logging
import math
import sys
import threading
import traceback
import types
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


class AgentError(RuntimeError):
    """The agent file failed or broke the contract; the message says where and how."""


class AgentTimeout(AgentError):
    """An agent's ``reset`` or ``step`` did not return within ``agent.timeoutSeconds``."""


async def bounded(fn, *args, timeout: Optional[float], what: str):
    """``await fn(*args)`` on a thread with its own event loop, given up after ``timeout`` seconds.

    A coroutine that blocks its loop (``time.sleep``) cannot be cancelled; on its own thread it
    only costs that thread, which is abandoned (a daemon) when the time is up."""
    if timeout is None:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def run() -> None:
        async def call():
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result

        try:
            value = asyncio.run(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting episode
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, value)

    thread = threading.Thread(target=run, daemon=True, name=f"agent-{what}")
    thread.start()
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        _abandoned.append(thread)
        raise AgentTimeout(f"AgentInstance.{what} did not return within {timeout:g}s") from None


_abandoned: list[threading.Thread] = []


def abandoned_calls() -> int:
    """Calls given up at their timeout whose threads still run (a process holding any should be retired)."""
    _abandoned[:] = [t for t in _abandoned if t.is_alive()]
    return len(_abandoned)


async def new_instance(cls, *, timeout: Optional[float]):
    """An ``AgentInstance`` made as OpenRLHF makes it (``__init__`` may be ``async``), bounded like a call."""
    instance = cls.__new__(cls)

    def construct():
        return instance.__init__()

    await bounded(construct, timeout=timeout, what="__init__")
    return instance


class AgentInstanceBase(ABC):
    """State of one episode. ``__init__`` may be ``async`` (as in OpenRLHF's examples)."""

    def __init__(self, *args, **kwargs):
        pass

    async def reset(self, states: dict, **kwargs) -> dict:
        return {"observation": states["observation"]}

    async def step(self, states: dict, **kwargs) -> dict:
        raise NotImplementedError("AgentInstance.step must return rewards, environment_feedback and done")


@dataclass
class _Completion:
    token_ids: list[int]
    text: str
    logprobs: list[dict]
    finish_reason: str


@dataclass
class _RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[_Completion]


@dataclass
class _Logprob:
    logprob: float


class AgentExecutorBase(ABC):
    """Runs episodes of ``agent_instance_cls`` against ``llm_engine`` (see the module docstring)."""

    def __init__(self, agent_instance_cls, max_steps, max_length, llm_engine, hf_tokenizer, result_queue=None):
        if not (isinstance(agent_instance_cls, type) and issubclass(agent_instance_cls, AgentInstanceBase)):
            raise AgentError(f"{agent_instance_cls!r} must be a subclass of AgentInstanceBase")
        self.agent_instance_cls = agent_instance_cls
        self.max_steps = max_steps
        self.max_length = max_length
        self.llm_engine = llm_engine
        self.hf_tokenizer = hf_tokenizer
        self.result_queue = result_queue
        self.call_timeout: Optional[float] = None  #: agent.timeoutSeconds, set by the runner

    async def execute(self, prompt, label, sampling_params):
        tokenizer = self.hf_tokenizer
        instance = await new_instance(self.agent_instance_cls, timeout=getattr(self, "call_timeout", None))
        reset = await bounded(instance.reset, {"observation": prompt, "label": label},
                              timeout=getattr(self, "call_timeout", None), what="reset")
        observation = reset.get("observation", prompt) if isinstance(reset, dict) else prompt
        prompt_ids = tokenizer(observation, add_special_tokens=False)["input_ids"]
        tokens, mask, logprobs = list(prompt_ids), [], []
        total_reward, score, extra_logs, steps, out_of_tokens, done = 0.0, None, {}, 0, False, False
        while steps < self.max_steps:
            budget = self.max_length - len(tokens)
            if budget <= 0:
                out_of_tokens = True
                break
            params = copy.copy(sampling_params)
            params.max_tokens = max(1, min(int(getattr(params, "max_tokens", budget) or budget), budget))
            output = await self.llm_engine.generate(tokens, params)
            action = output.outputs[0]
            tokens += list(action.token_ids)
            mask += [1.0] * len(action.token_ids)
            logprobs += [entry[t].logprob for entry, t in zip(action.logprobs, action.token_ids)]
            result = await bounded(instance.step, {"observation_text": observation, "action_text": action.text,
                                                   "label": label, "sampling_params": params},
                                   timeout=getattr(self, "call_timeout", None), what="step")
            steps += 1
            reward, done, feedback = _check_step(result)
            total_reward += reward
            score = _number(result["scores"], "scores") if result.get("scores") is not None else None
            extra_logs = result.get("extra_logs") or {}
            observation = observation + action.text + feedback
            if done:
                break
            feedback_ids = tokenizer(feedback, add_special_tokens=False)["input_ids"][: max(0, self.max_length - len(tokens))]
            tokens += feedback_ids
            mask += [0.0] * len(feedback_ids)
            logprobs += [0.0] * len(feedback_ids)
            if result.get("sampling_params") is not None:
                sampling_params = result["sampling_params"]
        episode = {
            "prompt": prompt, "label": label, "observation_tokens": tokens, "prompt_length": len(prompt_ids),
            "action_mask": mask, "rollout_log_probs": logprobs, "reward": total_reward,
            "scores": total_reward if score is None else score, "extra_logs": extra_logs, "steps": steps,
            # the episode wanted another turn but the token budget was spent
            "out_of_tokens": out_of_tokens or (steps < self.max_steps and not done and len(tokens) >= self.max_length),
        }
        if self.result_queue is not None:
            put = self.result_queue.put(episode)
            if inspect.isawaitable(put):
                await put
        return episode


def _number(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise AgentError(f"AgentInstance.step returned `{name}` with {value.numel()} values; return one per step, e.g. torch.tensor([r])")
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AgentError(f"AgentInstance.step returned `{name}` = {value!r}, not a number") from None
    if not math.isfinite(number):
        raise AgentError(f"AgentInstance.step returned `{name}` = {number}; rewards and scores must be finite")
    return number


def _check_step(result: Any) -> tuple[float, bool, str]:
    if not isinstance(result, dict):
        raise AgentError(f"AgentInstance.step returned a {type(result).__name__}; it must return a dict with "
                         "rewards, environment_feedback and done")
    missing = [k for k in ("rewards", "environment_feedback", "done") if k not in result]
    if missing:
        raise AgentError(f"AgentInstance.step returned a dict without {', '.join(missing)} (keys: {sorted(result)})")
    if not isinstance(result["environment_feedback"], str):
        raise AgentError("AgentInstance.step: `environment_feedback` must be a string")
    return _number(result["rewards"], "rewards"), bool(result["done"]), result["environment_feedback"]


# --------------------------------------------------------------------------- loading


def install_openrlhf_alias() -> None:
    """Make ``openrlhf.utils.agent`` importable as this module (for files written for OpenRLHF)."""
    if "openrlhf.utils.agent" in sys.modules:
        return
    for name in ("openrlhf", "openrlhf.utils"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
    sys.modules["openrlhf.utils.agent"] = sys.modules[__name__]
    sys.modules["openrlhf.utils"].agent = sys.modules[__name__]


def load_agent(path: str):
    """``(executor_cls, instance_cls)`` from an agent file (executor_cls None when it defines only AgentInstance)."""
    install_openrlhf_alias()
    spec = importlib.util.spec_from_file_location("agent_func", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - shown with the user's traceback
        raise AgentError(f"{path} failed while loading: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
    executor = getattr(module, "AgentExecutor", None)
    instance = getattr(module, "AgentInstance", None)
    if executor is None and instance is None:
        raise AgentError(f"{path} defines neither AgentExecutor nor AgentInstance (OpenRLHF's agent API)")
    if executor is not None and not issubclass(executor, AgentExecutorBase):
        raise AgentError(f"{path}: AgentExecutor must subclass AgentExecutorBase")
    if instance is not None and not issubclass(instance, AgentInstanceBase):
        raise AgentError(f"{path}: AgentInstance must subclass AgentInstanceBase")
    return executor, instance


def make_sampling_params(rollout_spec):
    """What agent code receives as ``sampling_params``: vLLM's SamplingParams when installed."""
    fields = dict(max_tokens=rollout_spec.max_new_tokens, temperature=rollout_spec.temperature,
                  top_p=rollout_spec.top_p, top_k=rollout_spec.top_k, logprobs=0)
    try:
        from vllm import SamplingParams

        return SamplingParams(**{**fields, "top_k": fields["top_k"] if fields["top_k"] > 0 else 0})
    except ImportError:
        return types.SimpleNamespace(**fields)


def sampling_fields(params: Any) -> dict:
    """The sampling settings that travel with a generate request (vLLM SamplingParams or look-alike)."""
    top_k = getattr(params, "top_k", -1)
    return {"max_tokens": int(getattr(params, "max_tokens", 16) or 16),
            "temperature": float(getattr(params, "temperature", 1.0)),
            "top_p": float(getattr(params, "top_p", 1.0)), "top_k": int(-1 if top_k is None else top_k)}


# --------------------------------------------------------------------------- running episodes


def agent_rewards(samples: list, faults: Sequence = ()):
    """The episodes' rewards and scores as a validated RewardResult (extra_logs: mean over episodes), with
    the faulted episodes of the rollout (:attr:`AgentRunner.faults`)."""
    from .reward import RewardResult

    logs: dict[str, list[float]] = {}
    for sample in samples:
        for key, value in (sample.info or {}).items():
            try:
                logs.setdefault(key, []).append(_number(value, f"extra_logs[{key!r}]"))
            except AgentError:
                continue  # non-numeric extra logs are not metrics
    return RewardResult(rewards=torch.tensor([x.reward for x in samples], dtype=torch.float32),
                        scores=torch.tensor([x.score for x in samples], dtype=torch.float64),
                        extra_logs={k: sum(v) / len(v) for k, v in logs.items()}, faults=list(faults))


class EngineClient:
    """The ``llm_engine`` agents see: ``await generate(token_ids, sampling_params)`` -> a RequestOutput-like
    object. Requests that are ready together go to the rollout engines as one batch."""

    def __init__(self, cluster, tokenizer):
        self.cluster = cluster
        self.tokenizer = tokenizer
        self._queue: list = []
        self._task: Optional[asyncio.Task] = None
        self.tokens = 0

    def take_token_count(self) -> int:
        """Tokens generated since the last call."""
        count, self.tokens = self.tokens, 0
        return count

    async def generate(self, prompt_token_ids, sampling_params):
        future = asyncio.get_running_loop().create_future()
        self._queue.append((list(prompt_token_ids), sampling_params, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        from .rollout import SamplingConfig

        while self._queue:
            for _ in range(3):  # let every episode that is about to ask do so
                await asyncio.sleep(0)
            batch, self._queue = self._queue, []
            groups: dict[SamplingConfig, list] = {}
            for ids, params, future in batch:
                config = SamplingConfig(n=1, max_new_tokens=int(params.max_tokens),
                                        temperature=float(getattr(params, "temperature", 1.0)),
                                        top_p=float(getattr(params, "top_p", 1.0)), top_k=int(getattr(params, "top_k", -1) or -1))
                groups.setdefault(config, []).append((ids, future))
            for config, items in groups.items():
                try:
                    gens = await self.cluster.generate_async([ids for ids, _ in items], config)
                except Exception as exc:  # noqa: BLE001 - surfaces in the waiting episodes
                    for _, future in items:
                        future.set_exception(exc)
                    continue
                for (ids, future), (gen,) in zip(items, gens):
                    self.tokens += len(gen.token_ids)
                    text = self.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
                    logprobs = [{t: _Logprob(lp)} for t, lp in zip(gen.token_ids, gen.logprobs)]
                    future.set_result(_RequestOutput(ids, [_Completion(list(gen.token_ids), text, logprobs, gen.finish_reason)]))


@dataclass
class AgentRunner:
    """Runs ``n`` episodes per prompt in the agent's sandboxed processes (:mod:`.agent_sandbox`)."""

    path: str
    cluster: Any
    tokenizer: Any
    max_steps: int
    max_length: int
    rollout_spec: Any
    policy: Any = None  #: ``spec.agent`` (timeoutSeconds, onError, fallbackReward, parallelism, sandbox); None: defaults
    env: Optional[dict] = None  #: variables the agent's processes see besides the allow-listed ones
    client: EngineClient = field(init=False)
    faults: list = field(init=False, default_factory=list)  #: the last rollout's faulted episodes
    _turns: list = field(init=False, default_factory=list)  #: (turns, out of tokens) of episodes not yet logged
    _warned: bool = field(init=False, default=False)

    def __post_init__(self):
        from .agent_sandbox import AgentSandbox
        from .reward.sandboxed import limits_from_spec
        from .sandbox import SandboxStartError

        policy = self.policy
        sandbox = policy.sandbox.model_dump() if policy is not None else {}
        self.client = EngineClient(self.cluster, self.tokenizer)
        self.sandbox = AgentSandbox(
            self.path, tokenizer=self.tokenizer, max_steps=self.max_steps, max_length=self.max_length,
            timeout=policy.timeout_seconds if policy is not None else None,
            size=policy.parallelism if policy is not None else None, limits=limits_from_spec(sandbox),
            network=bool(sandbox.get("network", False)), read_paths=sandbox.get("read_paths", ()),
            write_paths=sandbox.get("write_paths", ()), env=self.env)
        try:
            report = self.sandbox.start()
        except SandboxStartError as exc:
            raise AgentError(f"{self.path}: {exc}") from None
        logger.info("agent sandbox (%d processes): %s", len(self.sandbox.hosts),
                    "; ".join(f"{k}: {v}" for k, v in report.items()))

    def close(self) -> None:
        self.sandbox.close()

    def take_episode_stats(self) -> dict[str, float]:
        """``agent/turns_mean`` and ``agent/cut_to_one_turn`` (episodes that wanted a second turn but had
        spent the token budget) since the last call; the first time one is cut, a warning with the numbers."""
        turns, self._turns = self._turns, []
        if not turns:
            return {}
        cut = sum(1 for steps, out in turns if out and steps <= 1)
        if cut and not self._warned and self.max_steps > 1:
            self._warned = True
            logger.warning("%d of %d agent episodes ran a single turn: the episode's token budget (rollout.promptMaxLen +"
                           " rollout.maxNewTokens = %d tokens) was spent after the first action, so agent.maxSteps = %d"
                           " turns never happen; raise those limits to train multi-turn", cut, len(turns),
                           self.max_length, self.max_steps)
        return {"agent/turns_mean": sum(steps for steps, _ in turns) / len(turns), "agent/cut_to_one_turn": cut}

    def rollout(self, prompts: list, n: int, policy: Any = None) -> list:
        """``n`` episodes per prompt as training samples (prompt-major), scored by the agent under the
        fault ``policy`` (``spec.agent``); the faulted ones are listed in :attr:`faults`."""
        from .rollout import Sample

        if policy is not None:
            self.policy = policy
        samples = []
        for ep in self.run(prompts, n):
            tokens, start = ep["observation_tokens"], ep["prompt_length"]
            samples.append(Sample(
                prompt_ids=tokens[:start], response_ids=tokens[start:], logprobs=ep["rollout_log_probs"],
                truncated=len(tokens) >= self.max_length, mask=ep["action_mask"], reward=ep["reward"],
                score=ep["scores"], info=ep["extra_logs"],
            ))
        return samples

    async def _generate(self, token_ids: list, fields: dict) -> dict:
        """An episode's engine request, batched with the others by :class:`EngineClient`."""
        output = await self.client.generate(token_ids, types.SimpleNamespace(**fields))
        completion = output.outputs[0]
        return {"token_ids": list(completion.token_ids), "text": completion.text, "finish_reason": completion.finish_reason,
                "logprobs": [entry[t].logprob for entry, t in zip(completion.logprobs, completion.token_ids)]}

    def run(self, prompts: list, n: int) -> list[dict]:
        """One episode dict per sample, prompt-major (``n`` per prompt); faulted episodes are stand-ins
        (the prompt and one masked token) and their faults go to :attr:`faults`."""
        from .reward import RewardFault

        fields = sampling_fields(make_sampling_params(self.rollout_spec))
        jobs = [(p.text, p.label, fields) for p in prompts for _ in range(n)]
        outcomes = asyncio.run(self.sandbox.run_episodes(jobs, self._generate))
        self.faults, episodes = [], []
        for index, ((text, label, _), outcome) in enumerate(zip(jobs, outcomes)):
            if outcome.ok:
                episodes.append(outcome.value)
                continue
            error = outcome.error
            detail = "\n".join(x for x in (error.get("traceback", ""), outcome.output) if x)
            self.faults.append(RewardFault(outcome.status, index, f"{error.get('type', 'Error')}: "
                                           f"{error.get('message', '')}"[:500], error.get("line"), detail[-4000:],
                                           str(text)[:200]))
            episodes.append(self._stand_in(text, label))
        self._turns += [(ep["steps"], ep.get("out_of_tokens", False)) for ep in episodes]
        return episodes

    def _stand_in(self, text: str, label: Any) -> dict:
        """A faulted episode's sample: the prompt, one masked-out token, the fallback reward."""
        prompt_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) or [0]
        pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        fallback = self.policy.fallback_reward if self.policy is not None and self.policy.on_error == "fallback" else 0.0
        return {"prompt": text, "label": label, "observation_tokens": prompt_ids + [pad],
                "prompt_length": len(prompt_ids), "action_mask": [0.0], "rollout_log_probs": [0.0],
                "reward": fallback, "scores": fallback, "extra_logs": {}, "steps": 0}
