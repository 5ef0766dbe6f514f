"""Advantage estimators, KL estimators and PPO losses, matching OpenRLHF's semantics.

Pure torch; no Ray, no model code. Every function works on plain tensors so it can be
unit-tested with hand-computed numbers and reused by the Ray actor/critic workers.

Shape conventions
-----------------
``B`` is the rollout batch size, ``B = n_prompts * n_samples_per_prompt``, ordered
*prompt-major*: the ``n_samples_per_prompt`` samples of one prompt are contiguous
(``[p0s0, p0s1, ..., p1s0, p1s1, ...]``). ``T`` is the (padded) response length.

* ``rewards`` / ``scores``: ``[B]`` - one scalar per sample (reward function output).
* ``action_mask``: ``[B, T]`` - 1 (or True) on response tokens, 0 on padding.
* ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``values``, ``kl``,
  ``advantages``, ``returns``: ``[B, T]``.

How OpenRLHF turns a scalar reward into per-token advantages
-------------------------------------------------------------
1. *Group shaping* of the scalar rewards (:func:`shape_group_rewards`), per prompt group.
2. *Per-token rewards* (:func:`compute_token_rewards`): ``-kl_coef * kl`` on every token
   (unless KL is used as a loss), plus the (optionally clipped) shaped reward on the last
   response token.
3. *Returns/advantages*: GAE with a critic for ``gae``, otherwise the discounted
   cumulative sum of the per-token rewards (advantages = returns).
4. *Batch whitening* of the advantages over all response tokens of the batch, for some
   estimators only (:func:`whiten_advantages`).

Estimator table (OpenRLHF ``--advantage_estimator``)::

    estimator            group shaping of r (per prompt, n samples)   per-token step       whitened over batch
    -------------------  --------------------------------------------  -------------------  -------------------
    gae                  none                                          GAE(gamma, lambd)    yes
    reinforce            none                                          discounted sum       yes
    reinforce_baseline   r - mean(r)                                   sum, gamma := 1      yes
    rloo                 r - mean_{j != i}(r_j) = (r - mean) n/(n-1)    sum, gamma := 1      no
    group_norm (GRPO)    (r - mean(r)) / (std(r) + 1e-9)  [see below]  sum, gamma := 1      no
    dr_grpo              r - mean(r)                                   sum, gamma := 1      no

* ``std`` in ``group_norm`` is the *unbiased* (n - 1) sample standard deviation
  (``torch.Tensor.std`` default), as in OpenRLHF; the divisor gets a floor (below).
* Whitening is ``(A - mean) * rsqrt(max(var, 1e-8))`` with the *population* mean and
  variance taken over all unmasked tokens of the whole batch; with
  ``std_norm=False`` (OpenRLHF ``--no_advantage_std_norm``) only the mean is removed.
* OpenRLHF forces ``gamma = 1.0`` (with a warning) for the four group estimators; so do we.
* ``reward_clip_range`` clamps the *shaped* reward just before it is placed on the last
  token (OpenRLHF applies it inside ``compute_reward``, after group shaping).

Numerics of the group estimators
--------------------------------
OpenRLHF (0.8.11 to 0.11.0) computes group statistics in the rewards' float32, where equal
rewards do not cancel: the mean of eight 0.3s is not 0.3 while their std is exactly 0, so
``(r - mean) / (std + 1e-9)`` turns one rounding unit into +29.8 per sample. Here:

* Group statistics are computed in float64; shaped rewards come back in the rewards' dtype.
* **Zero-signal groups**: rewards equal to within the float resolution of their magnitude,
  ``max(r) - min(r) <= GROUP_TIE_ULPS * eps * max|r|`` with ``GROUP_TIE_ULPS = 4`` and ``eps``
  the machine epsilon of the rewards' dtype but never finer than float32's ``2**-23`` (rewards
  reach the trainer as float32), i.e. a spread of at most ~4.8e-7 of the largest ``|r|``. Every
  group estimator gives them exactly 0 (:func:`zero_signal_groups`); :func:`compute_advantages`
  counts them (``zero_groups``, metric ``advantages/zero_groups``) and, unless the KL penalty is
  in the reward, returns 0 on all their tokens, after whitening too. They carry no learning
  signal: dynamic filtering is the tool to drop them.
* **Tiny spreads** in ``group_norm``: the divisor is ``max(std + 1e-9, GROUP_STD_FLOOR * max|r|)``,
  ``GROUP_STD_FLOOR = 1e-4``. Above the floor this is OpenRLHF's divisor; below it advantages
  shrink with the spread instead of being stretched to unit std. OpenRLHF's ``+ 1e-9`` is no
  floor in practice (one float32 rounding unit of spread becomes a full-size signal); TRL's
  ``+ 1e-4`` matches ours for rewards of magnitude 1 but is absolute: it damps groups of small
  rewards however well resolved, leaves large rewards' rounding unguarded, and shrinks every
  group by a relative ``1e-4 / std``. Ours is relative: ``r -> c * r`` (``c > 0``) keeps the advantages.
* **Bounds**, for any finite rewards: ``|group_norm| <= (n - 1) / sqrt(n)`` (< ``sqrt(n)``; 2.47
  for n = 8, 7.875 for n = 64; one outlier among equal values reaches it; the floor only enlarges
  the divisor); ``|rloo| <= max(r) - min(r)``; ``|dr_grpo|``, ``|reinforce_baseline|`` (before
  whitening) ``<= (n - 1) / n * (max(r) - min(r))``.

Deliberate differences from OpenRLHF (on response tokens of the other groups every value is
OpenRLHF's formula, evaluated in float64): zero-signal groups get exactly 0 and ``group_norm``
groups below the floor are damped (above); padded positions are zero in the token rewards
(OpenRLHF leaves ``-kl_coef * kl`` there, and an empty row's reward on its last position) as
well as in the advantages and returns; a batch with no response tokens yields zero advantages
(OpenRLHF: NaN); ``rloo`` and ``group_norm`` with ``n_samples_per_prompt = 1`` raise
``ValueError`` (OpenRLHF: NaN from ``n - 1 = 0`` and an undefined std); dynamic filtering
decides at the scores' own precision (:func:`dynamic_filter`). The policy loss clamps the
log-ratio to ``[-20, 20]`` before ``exp``, as OpenRLHF does since 0.10.3.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ESTIMATORS",
    "GROUP_ESTIMATORS",
    "WHITENED_ESTIMATORS",
    "KL_ESTIMATORS",
    "AdvantageResult",
    "FilterResult",
    "PolicyLossStats",
    "masked_mean",
    "compute_kl",
    "shape_group_rewards",
    "zero_signal_groups",
    "compute_token_rewards",
    "discounted_returns",
    "gae_advantages",
    "whiten_advantages",
    "compute_advantages",
    "policy_loss",
    "value_loss",
    "dynamic_filter",
]

Estimator = Literal["gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo"]
KLEstimator = Literal["k1", "k2", "k3"]

#: All advantage estimators, in OpenRLHF's spelling.
ESTIMATORS: Tuple[str, ...] = ("gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo")
#: Estimators that shape rewards within a prompt group (and force gamma = 1).
GROUP_ESTIMATORS = frozenset({"reinforce_baseline", "rloo", "group_norm", "dr_grpo"})
#: Estimators whose advantages OpenRLHF whitens over the whole batch.
WHITENED_ESTIMATORS = frozenset({"gae", "reinforce", "reinforce_baseline"})
#: KL estimators (Schulman, "Approximating KL divergence").
KL_ESTIMATORS: Tuple[str, ...] = ("k1", "k2", "k3")

#: Epsilon added to the group std in ``group_norm`` (OpenRLHF's).
GROUP_NORM_EPS = 1e-9
#: A group whose spread is at most this many machine epsilons of its largest |reward| is a tie.
GROUP_TIE_ULPS = 4
#: ``group_norm`` divides by at least this fraction of the group's largest |reward|.
GROUP_STD_FLOOR = 1e-4
#: The policy loss clamps ``logprobs - old_logprobs`` to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] before exp.
LOG_RATIO_CLAMP = 20.0
#: Floor of the variance in batch whitening.
WHITEN_VAR_EPS = 1e-8
#: OpenRLHF clamps every KL estimate into [-KL_CLAMP, KL_CLAMP].
KL_CLAMP = 10.0


# --------------------------------------------------------------------------- helpers


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor], dim: Optional[int] = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is non-zero (all positions if ``mask`` is None).

    With ``dim=None`` this is the *token-level* mean over the whole batch.
    """
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=dim)
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim=dim) / m.sum(dim=dim)


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


def _group(rewards: torch.Tensor, n_samples_per_prompt: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if n_samples_per_prompt < 1:
        raise ValueError(f"n_samples_per_prompt must be >= 1, got {n_samples_per_prompt}")
    if rewards.numel() % n_samples_per_prompt:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not a whole number of groups of "
            f"n_samples_per_prompt={n_samples_per_prompt} (samples must be ordered prompt-major)"
        )
    return rewards.reshape(-1, n_samples_per_prompt)


# --------------------------------------------------------------------------- KL


def compute_kl(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: KLEstimator = "k1",
    action_mask: Optional[torch.Tensor] = None,
    clamp: Optional[float] = KL_CLAMP,
) -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference model.

    With ``log_ratio = logprobs - ref_logprobs`` (computed in float32):

    * ``k1``: ``log_ratio``
    * ``k2``: ``log_ratio ** 2 / 2``
    * ``k3``: ``exp(-log_ratio) - 1 + log_ratio`` (non-negative, unbiased for KL(pi||ref))

    The result is clamped to ``[-clamp, clamp]`` (OpenRLHF uses 10 for every estimator;
    ``clamp=None`` disables it) and, if ``action_mask`` is given, zeroed on padding.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")
    log_ratio = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.pow(2)
    else:
        kl = torch.exp(-log_ratio) - 1.0 + log_ratio
    if clamp is not None:
        kl = kl.clamp(min=-clamp, max=clamp)
    if action_mask is not None:
        kl = kl * action_mask.to(kl.dtype)
    return kl


# --------------------------------------------------------------------------- reward shaping


def _resolution(dtype: torch.dtype) -> float:
    """Relative resolution of float rewards of ``dtype``: its machine epsilon, never finer than float32's."""
    return max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)


def _ties(g64: torch.Tensor, resolution: float) -> torch.Tensor:
    """``[G]`` bool: the rows of ``g64`` (float64 ``[G, n]``) that are equal to within their resolution."""
    spread = g64.amax(dim=-1) - g64.amin(dim=-1)
    return spread <= GROUP_TIE_ULPS * resolution * g64.abs().amax(dim=-1)


def zero_signal_groups(rewards: torch.Tensor, n_samples_per_prompt: int) -> torch.Tensor:
    """``[G]`` bool, one per prompt group: the groups whose rewards are equal to within the float
    resolution of their magnitude (see the module docstring), so every group estimator gives them 0."""
    r = _as_float(rewards)
    return _ties(_group(r, n_samples_per_prompt).double(), _resolution(r.dtype))


def _shape(rewards: torch.Tensor, n: int, estimator: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(shaped [B], ties [G] or None for non-group estimators)``; see :func:`shape_group_rewards`."""
    _check_estimator(estimator)
    r = _as_float(rewards)
    if estimator not in GROUP_ESTIMATORS:
        return r.clone(), None
    g = _group(r, n).double()
    if estimator in ("rloo", "group_norm") and n < 2:
        raise ValueError(f"advantage estimator {estimator!r} needs n_samples_per_prompt >= 2, got {n}")
    centred = g - g.mean(dim=-1, keepdim=True)
    if estimator == "rloo":
        shaped = g - (g.sum(dim=-1, keepdim=True) - g) / (n - 1)
    elif estimator == "group_norm":
        std = (centred.pow(2).sum(dim=-1, keepdim=True) / (n - 1)).sqrt()  # unbiased
        shaped = centred / torch.maximum(std + GROUP_NORM_EPS, GROUP_STD_FLOOR * g.abs().amax(dim=-1, keepdim=True))
    else:  # reinforce_baseline, dr_grpo
        shaped = centred
    ties = _ties(g, _resolution(r.dtype))
    shaped[ties] = 0.0
    return shaped.to(r.dtype).reshape(-1), ties


def shape_group_rewards(rewards: torch.Tensor, n_samples_per_prompt: int, estimator: str) -> torch.Tensor:
    """Apply the per-prompt baseline of ``estimator`` to scalar rewards ``[B]`` (prompt-major).

    * ``rloo``: ``r_i - mean_{j != i} r_j`` (needs ``n >= 2``)
    * ``reinforce_baseline``, ``dr_grpo``: ``r_i - mean(r)``
    * ``group_norm``: ``(r_i - mean(r)) / max(std(r) + 1e-9, 1e-4 * max|r|)``, unbiased std
      (needs ``n >= 2``)
    * ``reinforce``, ``gae``: unchanged

    Statistics in float64, result in the rewards' dtype; a zero-signal group
    (:func:`zero_signal_groups`) is exactly 0 under every group estimator.
    """
    return _shape(rewards, n_samples_per_prompt, estimator)[0]


def compute_token_rewards(
    rewards: torch.Tensor,
    action_mask: torch.Tensor,
    kl: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    reward_clip_range: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """Per-token rewards ``[B, T]``: ``-kl_coef * kl`` everywhere, plus ``rewards[i]`` on the
    last response token of row ``i`` (OpenRLHF ``compute_reward``).

    ``kl=None`` (or ``kl_coef <= 0``) means no KL penalty in the reward, which is what
    ``use_kl_loss`` does. ``reward_clip_range=(lo, hi)`` clamps ``rewards`` first.
    Padding positions are zero, so a row without response tokens has no reward at all (OpenRLHF
    puts it on the last position and leaves ``-kl_coef * kl`` on padding; consumers mask both away).
    """
    if action_mask.dim() != 2:
        raise ValueError(f"action_mask must be 2-D [B, T], got shape {tuple(action_mask.shape)}")
    r = _as_float(rewards)
    if r.shape != (action_mask.size(0),):
        raise ValueError(f"rewards shape {tuple(r.shape)} does not match batch size {action_mask.size(0)}")
    if reward_clip_range is not None:
        r = r.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
    dtype = kl.dtype if kl is not None else r.dtype
    token_rewards = torch.zeros(action_mask.shape, dtype=dtype, device=action_mask.device)
    length = action_mask.size(1)
    last = length - 1 - action_mask.long().fliplr().argmax(dim=1, keepdim=True)
    token_rewards.scatter_(1, last, r.unsqueeze(1).to(dtype))
    if kl is not None and kl_coef > 0.0:
        token_rewards = token_rewards - kl_coef * kl
    return torch.where(action_mask.bool(), token_rewards, torch.zeros_like(token_rewards))


# --------------------------------------------------------------------------- returns / advantages


def discounted_returns(token_rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = sum_{k >= t} gamma^(k-t) r_k`` over response tokens (padding contributes 0)."""
    r = token_rewards * action_mask.to(token_rewards.dtype)
    returns = torch.zeros_like(r)
    running = torch.zeros(r.size(0), dtype=r.dtype, device=r.device)
    for t in reversed(range(r.size(1))):
        running = r[:, t] + gamma * running
        returns[:, t] = running
    return returns


def gae_advantages(
    values: torch.Tensor,
    token_rewards: torch.Tensor,
    action_mask: torch.Tensor,
    gamma: float,
    lambd: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V_T = 0``; values and rewards are masked first),
    ``A_t = delta_t + gamma * lambd * A_{t+1}``, ``returns = A + V``.
    """
    m = action_mask.to(values.dtype)
    v = values * m
    r = token_rewards.to(values.dtype) * m
    length = r.size(1)
    advantages = torch.zeros_like(r)
    last_gae = torch.zeros(r.size(0), dtype=r.dtype, device=r.device)
    for t in reversed(range(length)):
        next_v = v[:, t + 1] if t < length - 1 else torch.zeros_like(last_gae)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last_gae = delta + gamma * lambd * last_gae
        advantages[:, t] = last_gae
    returns = advantages + v
    return advantages.detach(), returns.detach()


def whiten_advantages(
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    std_norm: bool = True,
    eps: float = WHITEN_VAR_EPS,
) -> torch.Tensor:
    """Whiten over all response tokens of the batch: ``(A - mean) * rsqrt(max(var, eps))``.

    Population mean/variance over unmasked tokens. ``std_norm=False`` only centres.
    Padding positions of the result are zero.
    """
    a = advantages if advantages.is_floating_point() else advantages.float()
    m = action_mask.to(a.dtype)
    count = m.sum()
    if count == 0:
        return torch.zeros_like(a)
    mean = (a * m).sum() / count
    centred = a - mean
    if std_norm:
        var = (centred.pow(2) * m).sum() / count
        centred = centred * var.clamp(min=eps).rsqrt()
    return centred * m


@dataclass
class AdvantageResult:
    """Output of :func:`compute_advantages`."""

    advantages: torch.Tensor  #: [B, T], zero on padding
    returns: torch.Tensor  #: [B, T], zero on padding
    token_rewards: torch.Tensor  #: [B, T], what the returns were computed from
    shaped_rewards: torch.Tensor  #: [B], scalar rewards after the group baseline
    whitened: bool  #: whether batch whitening was applied
    gamma: float  #: the discount actually used (1.0 for group estimators)
    zero_groups: int = 0  #: zero-signal prompt groups (:func:`zero_signal_groups`); 0 for gae/reinforce


def compute_advantages(
    estimator: str,
    rewards: torch.Tensor,
    action_mask: torch.Tensor,
    n_samples_per_prompt: int = 1,
    *,
    kl: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    use_kl_loss: bool = False,
    values: Optional[torch.Tensor] = None,
    gamma: float = 1.0,
    lambd: float = 0.95,
    reward_clip_range: Optional[Tuple[float, float]] = None,
    whiten: Optional[bool] = None,
    std_norm: bool = True,
) -> AdvantageResult:
    """Scalar rewards ``[B]`` -> per-token advantages and returns ``[B, T]`` for ``estimator``.

    Args:
        estimator: one of :data:`ESTIMATORS` (see the module docstring's table).
        rewards: ``[B]`` scalar rewards, prompt-major.
        action_mask: ``[B, T]`` response-token mask.
        n_samples_per_prompt: group size for the group estimators.
        kl: ``[B, T]`` per-token KL (see :func:`compute_kl`); put in the reward as
            ``-kl_coef * kl`` unless ``use_kl_loss`` (then it is ignored here and belongs in
            :func:`policy_loss`).
        values: ``[B, T]`` critic values, required for ``gae``.
        gamma, lambd: discount and GAE lambda. ``gamma`` is forced to 1.0 for the group
            estimators, as OpenRLHF does (a warning is logged if it was not 1.0).
        reward_clip_range: clamp of the shaped reward before placing it on the last token.
        whiten: override whether to whiten (default: OpenRLHF's choice, :data:`WHITENED_ESTIMATORS`).
        std_norm: whether whitening divides by the std (OpenRLHF ``--no_advantage_std_norm``).

    Zero-signal groups get advantages and returns exactly 0 on every token (whitening included)
    unless the KL penalty is in the reward; ``zero_groups`` counts them either way.
    """
    _check_estimator(estimator)
    if action_mask.dim() != 2 or action_mask.size(0) != rewards.numel():
        raise ValueError(
            f"action_mask must be [B, T] with B = len(rewards) = {rewards.numel()}, got {tuple(action_mask.shape)}"
        )
    if estimator == "gae" and values is None:
        raise ValueError("advantage estimator 'gae' needs critic values [B, T]")
    if estimator in GROUP_ESTIMATORS and gamma != 1.0:
        logger.warning("gamma=%s is overridden to 1.0 for advantage estimator %r (as OpenRLHF does)", gamma, estimator)
        gamma = 1.0

    shaped, ties = _shape(rewards, n_samples_per_prompt, estimator)
    kl_in_reward = kl is not None and kl_coef > 0.0 and not use_kl_loss
    token_rewards = compute_token_rewards(
        shaped,
        action_mask,
        kl=kl if kl_in_reward else None,
        kl_coef=kl_coef,
        reward_clip_range=reward_clip_range,
    )
    # [B, 1]: rows whose advantages must stay exactly 0 (no reward signal and no KL penalty)
    silent = None if ties is None or kl_in_reward else ties.repeat_interleave(n_samples_per_prompt).unsqueeze(1)
    if silent is not None:
        token_rewards = token_rewards.masked_fill(silent, 0.0)
    m = action_mask.to(token_rewards.dtype)
    if estimator == "gae":
        advantages, returns = gae_advantages(values.to(token_rewards.dtype), token_rewards, action_mask, gamma, lambd)
    else:
        returns = discounted_returns(token_rewards, action_mask, gamma)
        advantages = returns.clone()

    do_whiten = (estimator in WHITENED_ESTIMATORS) if whiten is None else whiten
    if do_whiten:
        advantages = whiten_advantages(advantages, action_mask, std_norm=std_norm)
        if silent is not None:
            advantages = advantages.masked_fill(silent, 0.0)
    return AdvantageResult(
        advantages=advantages * m,
        returns=returns * m,
        token_rewards=token_rewards,
        shaped_rewards=shaped,
        whitened=do_whiten,
        gamma=gamma,
        zero_groups=int(ties.sum()) if ties is not None else 0,
    )


# --------------------------------------------------------------------------- losses


@dataclass
class PolicyLossStats:
    """Detached diagnostics of :func:`policy_loss` (0-d tensors)."""

    policy_loss: torch.Tensor  #: clipped surrogate only
    kl_loss: torch.Tensor  #: masked mean KL (0 when no KL loss)
    clip_fraction: torch.Tensor  #: fraction of tokens where the clipped surrogate was active
    approx_kl: torch.Tensor  #: masked mean of (old_logp - logp), OpenRLHF's "ppo_kl"


def _aggregate(loss: torch.Tensor, mask: Optional[torch.Tensor], token_level: bool) -> torch.Tensor:
    if token_level:
        return masked_mean(loss, mask)
    return masked_mean(loss, mask, dim=-1).mean()


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: Optional[torch.Tensor] = None,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    token_level: bool = True,
    kl: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
) -> Tuple[torch.Tensor, PolicyLossStats]:
    """PPO clipped surrogate loss (OpenRLHF ``PolicyLoss``), optionally plus a KL loss term.

    ``ratio = exp(clamp(logp - old_logp, -20, 20))`` (OpenRLHF since 0.10.3: an outlier token cannot
    overflow); ``loss_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``.
    With ``dual_clip = c > 1`` the loss of tokens with ``A < 0`` is additionally capped at
    ``-c * A`` (Dual-clip PPO). ``token_level=True`` averages over every response token of
    the batch; ``False`` averages per sequence and then over sequences.

    KL as a loss (``use_kl_loss``): pass ``kl`` (``[B, T]``, e.g. :func:`compute_kl` with
    ``k3``) and ``kl_coef``; ``kl_coef * masked_mean(kl)`` (token-level over the batch, as
    OpenRLHF) is added to the loss.
    """
    if clip_eps_high is None:
        clip_eps_high = clip_eps_low
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1.0, got {dual_clip}")
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high) * advantages
    clipped = torch.min(surr1, surr2)
    if dual_clip is None:
        per_token = -clipped
    else:
        per_token = -torch.where(advantages < 0, torch.max(clipped, dual_clip * advantages), clipped)
    pg_loss = _aggregate(per_token, action_mask, token_level)

    if kl is not None and kl_coef > 0.0:
        kl_loss = masked_mean(kl, action_mask)
        loss = pg_loss + kl_coef * kl_loss
    else:
        kl_loss = torch.zeros((), dtype=pg_loss.dtype, device=pg_loss.device)
        loss = pg_loss

    with torch.no_grad():
        stats = PolicyLossStats(
            policy_loss=pg_loss.detach(),
            kl_loss=kl_loss.detach(),
            clip_fraction=masked_mean((surr2 < surr1).float(), action_mask),
            approx_kl=masked_mean(-log_ratio.detach(), action_mask),
        )
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    action_mask: Optional[torch.Tensor] = None,
    *,
    clip_eps: Optional[float] = None,
    token_level: bool = True,
) -> torch.Tensor:
    """Critic loss ``0.5 * mean(max((V_clip - R)^2, (V - R)^2))`` (OpenRLHF ``ValueLoss``).

    ``V_clip = old_V + clip(V - old_V, -clip_eps, clip_eps)``; with ``clip_eps=None`` it is
    the plain squared error.
    """
    if clip_eps is not None:
        clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        per_token = torch.max((clipped - returns).pow(2), (values - returns).pow(2))
    else:
        per_token = (values - returns).pow(2)
    return 0.5 * _aggregate(per_token, action_mask, token_level)


# --------------------------------------------------------------------------- dynamic filtering


@dataclass
class FilterResult:
    """Output of :func:`dynamic_filter`."""

    kept_indices: list[int]  #: sample indices (into the [B] batch) of the kept groups
    kept_groups: list[int]  #: prompt-group indices that were kept
    group_means: list[float]  #: mean score of every group
    pass_rate: float  #: kept groups / all groups, in [0, 1] (0.0 for an empty batch)
    num_groups: int = 0
    reasons: dict[int, str] = field(default_factory=dict)  #: group index -> why it was dropped


def dynamic_filter(
    scores: Sequence[float] | torch.Tensor,
    n_samples_per_prompt: int,
    score_range: Tuple[float, float] = (0.0, 1.0),
    std_threshold: Optional[float] = None,
) -> FilterResult:
    """DAPO-style dynamic filtering as in OpenRLHF ``--dynamic_filtering``.

    Samples are grouped by prompt (prompt-major, ``n_samples_per_prompt`` each). A group is
    kept iff ``lo < mean(scores) < hi`` - a *strict* open interval (OpenRLHF since 0.9.1; until
    0.9.0 it was ``lo + 1e-6 < mean < hi - 1e-6``), so with the default ``(0, 1)`` all-correct
    and all-wrong groups of 0/1 scores are dropped, and a mean exactly on a bound is dropped.

    The decision is taken at the precision the scores come in: a tensor (or array) keeps its
    float dtype - the reward layer hands over float32 - and Python numbers are float64. The
    bounds are rounded to that precision and the group mean is exact (no summation rounding),
    so scores that all equal a bound sit on it. OpenRLHF holds scores as float32 and compares
    their float64 mean with float64 bounds: all-0.3 scores with ``lo = 0.3`` are kept there
    (0.3 in float32 is 0.30000001) and dropped here, as the user who returned 0.3 means.

    ``std_threshold`` additionally drops groups whose population std is ``<= std_threshold``.
    It is in no OpenRLHF release (up to 0.11.0): it follows an unmerged proposal, OpenRLHF
    PR #1272 for issue #1270 (``--algo.dynamic_filtering_std_threshold``).
    """
    lo, hi = score_range
    if not lo < hi:
        raise ValueError(f"score_range must satisfy lo < hi, got {score_range}")
    if isinstance(scores, torch.Tensor) or hasattr(scores, "dtype"):
        s = torch.as_tensor(scores).detach().reshape(-1)
        precision = s.dtype if s.is_floating_point() else torch.float64
    else:
        s, precision = torch.tensor(list(scores), dtype=torch.float64), torch.float64
    s = s.to(device="cpu", dtype=torch.float64)  # widening is exact
    if not torch.isfinite(s).all():
        bad = int((~torch.isfinite(s)).nonzero()[0])
        raise ValueError(f"score of sample {bad} is {s[bad].item()}; scores must be finite")
    lo_p, hi_p = (torch.tensor(b, dtype=precision).item() for b in (lo, hi))
    groups = _group(s, n_samples_per_prompt).tolist() if s.numel() else []
    kept_indices: list[int] = []
    kept_groups: list[int] = []
    means: list[float] = []
    reasons: dict[int, str] = {}
    for gi, g in enumerate(groups):
        exact = sum(map(Fraction, g), Fraction(0)) / len(g)  # Fraction vs float compares exactly
        mean = float(exact)
        means.append(mean)
        if not (lo_p < exact < hi_p):
            reasons[gi] = f"mean score {mean:.6g} not in open interval ({lo:g}, {hi:g})"
            continue
        if std_threshold is not None:
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in g) / len(g))
            if std <= std_threshold:
                reasons[gi] = f"score std {std:.6g} <= {std_threshold:g}"
                continue
        kept_groups.append(gi)
        start = gi * n_samples_per_prompt
        kept_indices.extend(range(start, start + n_samples_per_prompt))
    num_groups = len(groups)
    return FilterResult(
        kept_indices=kept_indices,
        kept_groups=kept_groups,
        group_means=means,
        pass_rate=(len(kept_groups) / num_groups) if num_groups else 0.0,
        num_groups=num_groups,
        reasons=reasons,
    )
