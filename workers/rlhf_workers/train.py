"""The training loop. Read it top to bottom: this file is the whole algorithm.

:func:`train` shows one step as a sequence of named calls, each defined below it. Set-up and
tear-down (data, workers, resume, final model) live in :mod:`rlhf_workers.session`, and the
metric rows are assembled in :mod:`rlhf_workers.step_metrics`.

Each step:

1. **rollout** - take prompts, sample ``nSamplesPerPrompt`` responses each (with logprobs), or
   run as many multi-step agent episodes (``spec.agent``; they score themselves);
2. **reward** - score prompt + response texts with the user's reward (function, server or model);
3. **dynamic filtering** - keep prompt groups with ``lo < mean(score) < hi`` and refill from the
   data until the batch holds ``rolloutBatchSize`` groups or the data runs out;
4. **forward passes** - old policy logprobs (only when an update could drift from the rollout
   weights, or KL goes into the reward), reference logprobs (KL on), critic values (gae);
5. **advantages** - the estimator of the spec (:mod:`rlhf_workers.algorithms`);
6. **update** - PPO-clipped policy loss (and the critic's value loss) with DeepSpeed;
7. **weight sync** - the new weights go to the rollout engines;
8. **log** - metrics.jsonl / TensorBoard / W&B, the progress endpoint, a checkpoint every
   ``saveSteps``.

With ``algorithm.async`` steps 1-3 (:func:`collect_rollout`) run ahead in a thread while the
trainers do 4-7 (:mod:`rlhf_workers.async_rollout`); otherwise they run in place.

Metrics per step (``metrics.jsonl``): ``step``, ``episode``, ``reward/mean|std|min|max`` and
``score/mean`` over every sample generated in the step, ``reward/mean_trained`` over the
samples trained on (they differ only with dynamic filtering), ``filter/pass_rate``,
``filter/groups_generated``, ``kl`` (0 without a reference model), ``policy_loss``,
``clip_fraction``, ``ppo_kl``, ``grad_norm``, ``lr``, ``entropy`` (with an entropy bonus),
``critic_loss`` / ``values`` (gae), ``response_length/mean|max``, ``response/clip_ratio``
(responses cut at ``maxNewTokens``), ``rollout/logprob_diff_mean|max`` (engine vs trainer
logprobs of the sampled tokens: the weight-sync check), ``weight_sync/backend`` (``gloo``, ``nccl``,
``object_store`` or ``colocated``) and ``weight_sync/bytes`` (the weights pushed), ``samples``, ``samples_per_second``,
``advantages/zero_groups`` (trained prompt groups whose rewards tie: no signal; group estimators),
``tokens_per_second`` (generation), ``time/generate|reward|logprobs|advantages|update|weight_sync|checkpoint|step``,
and ``extra/<key>`` for every ``extra_logs`` key of the reward. Reward faults (calls that raised,
timed out or returned garbage; :mod:`rlhf_workers.reward.faults`): ``reward/errors/raised|timeout|invalid``
and ``reward/error_rate``; with ``onError: skip`` the faulted samples (their groups, for group
estimators) are left out of every other metric and of the update.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import ray
import torch

from rlhf_api.progress import utc_now
from rlhf_api.spec import GROUP_ESTIMATORS
from rlhf_api.workerconfig import WorkerConfig

from .agent import agent_rewards
from .async_rollout import OffPolicyCorrection, check_off_policy, off_policy_correction, rollout_source
from .algorithms import AdvantageResult, compute_advantages, compute_kl, dynamic_filter
from .batch import MicroBatch, dummy, pack, pad_rows
from .cluster import Cluster, RoleGroup, split_evenly
from .data import Prompt
from .metrics import ProgressServer
from .reward import FaultWindow, RewardFaultsExceeded, RewardResult
from .rollout import Sample, SamplingConfig
from .session import LogReporter, Reporter, Session, TrainResult, open_session
from .step_metrics import Timer, kl_metric, mean_stats, rollout_metrics, timing_metrics, update_metrics

logger = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One step's rollout, prompt-major: the groups kept for training (group g holds samples
    g*n .. g*n+n-1), and every sample generated to find them (dynamic filtering drops some)."""

    n: int
    skip_faulted: bool = False  #: drop samples the reward faulted on (onError: skip)
    whole_groups: bool = True  #: ... with their whole group (group estimators)
    prompts: list[Prompt] = field(default_factory=list)  #: one per kept group
    samples: list[Sample] = field(default_factory=list)  #: the kept groups' samples
    generated: list[Sample] = field(default_factory=list)  #: every sample generated, kept or not
    groups_generated: int = 0
    results: list[RewardResult] = field(default_factory=list)  #: the reward's, one per round of generation

    @property
    def groups(self) -> int:
        return len(self.prompts)

    def __len__(self) -> int:
        return len(self.samples)

    def add_group(self, prompt: Prompt, samples: list[Sample]) -> None:
        self.prompts.append(prompt)
        self.samples += samples

    def add_round(self, chunk: list[Prompt], samples: list[Sample], result: RewardResult, kept: Sequence[int]) -> None:
        """One round of generation: each sample gets its reward and score; the ``kept`` groups join the batch."""
        for sample, r, sc in zip(samples, result.rewards.tolist(), result.scores.tolist()):
            sample.reward, sample.score = r, sc
        self.results.append(result)
        dropped = result.faulted() if self.skip_faulted else set()
        self.generated += [x for i, x in enumerate(samples) if i not in dropped]
        self.groups_generated += len(chunk)
        for g in kept:
            members = [i for i in range(g * self.n, (g + 1) * self.n) if i not in dropped]
            if members and (len(members) == self.n or not self.whole_groups):
                self.add_group(chunk[g], [samples[i] for i in members])

    def action_mask(self) -> torch.Tensor:
        return pad_rows([s.mask if s.mask is not None else [1.0] * len(s.response_ids) for s in self.samples])


@dataclass
class ForwardPasses:
    """Step 4's outputs for the kept samples, ``[B, T]`` each and zero on padding; None where a pass is not needed."""

    action_mask: torch.Tensor
    rollout_logprobs: torch.Tensor  #: the engines' logprobs of the sampled tokens
    old_logprobs: Optional[torch.Tensor]  #: the policy's before the update (an update can drift, or KL in the reward)
    ref_logprobs: Optional[torch.Tensor]  #: the reference model's (KL on)
    values: Optional[torch.Tensor]  #: the critic's (gae)
    off_policy: Optional[OffPolicyCorrection] = None  #: importance weights of a batch sampled by an older policy


def train(config: WorkerConfig, *, max_steps: Optional[int] = None, reporter: Optional[Reporter] = None,
          progress: Optional[ProgressServer] = None, threads: Optional[int] = None) -> TrainResult:
    """Run (or resume) the job described by ``config`` on the connected Ray cluster."""
    spec = config.spec
    algo = spec.algorithm
    faults = FaultWindow.for_policy(spec.agent or spec.reward)
    with open_session(config, reporter or LogReporter(), progress, max_steps=max_steps, threads=threads) as s, \
            rollout_source(s, collect_rollout) as rollouts:  # in place, or ahead in a thread with algorithm.async
        step = s.first_step
        while step < s.total_steps and rollouts.more():
            if s.stop_signal is not None:  # SIGTERM during set-up
                s.stop(step)
            t = Timer()
            step_start = time.perf_counter()
            episode = s.prompts.episode

            # ---------------------------------------------------- 1-3. rollout, reward, dynamic filtering
            batch = rollouts.next(t)  # collect_rollout, below
            reward = RewardResult.concat(batch.results)
            for warning in reward.warnings:
                logger.warning("reward: %s", warning)
            fault_row = faults.record(step, reward.faults, len(reward))
            s.progress.update(step=step, episode=episode, **faults.progress())
            check_reward_faults(faults, s)  # too many faults over the window: fail fast, train on nothing

            row: dict[str, Any] = {"step": step + 1, "total_steps": s.total_steps, "episode": episode}
            if len(batch):
                # ------------------------------------------------ 4. forward passes: old policy, reference, critic
                with t("logprobs"):
                    passes = forward_passes(s.cluster, batch, spec, s.pad_id, off_policy=rollouts.stale(batch))

                # ------------------------------------------------ 5. advantages
                with t("advantages"):
                    kl = kl_penalty(spec, passes)
                    adv = advantages(spec, batch, passes, kl)

                # ------------------------------------------------ 6. update (policy and critic together)
                with t("update"):
                    stats = update(s.cluster, batch, passes, adv, spec, s.pad_id, seed=spec.training.seed + step)

                # ------------------------------------------------ 7. weight sync
                with t("weight_sync"):
                    synced = rollouts.push_weights()
                s.last_sync = utc_now()
                if rollouts.stale(batch):  # sampled by an older policy: its logprobs differ by the updates since
                    check_off_policy(stats)
                else:
                    check_weight_sync(stats, step)

                row.update(update_metrics(batch.samples, kl_metric(kl, passes.action_mask, stats, algo.kl.coef),
                                          adv, stats))
                row.update(synced.metrics())  # weight_sync/backend and weight_sync/bytes
                row.update(rollouts.metrics())  # async/* (algorithm.async)
                row.update(passes.off_policy.metrics if passes.off_policy else {})  # async/behaviour_kl, is_weight_*
            else:
                s.reporter.message(f"step {step + 1}: no prompt group passed dynamic filtering "
                                  "or every group had a reward fault; nothing to train on")
                row.update({"samples": 0, "kl": 0.0})

            # ---------------------------------------------------- 8. metrics, progress, checkpoint
            step += 1
            row.update(rollout_metrics(batch.generated, batch.groups, batch.groups_generated, reward.extra_logs))
            row.update(fault_row)
            tokens = s.agent.client.take_token_count() if s.agent else sum(len(x.response_ids) for x in batch.generated)
            row.update(s.agent.take_episode_stats() if s.agent else {})
            if spec.checkpoint.save_steps > 0 and step % spec.checkpoint.save_steps == 0 and step < s.total_steps:
                with t("checkpoint"):
                    s.save_checkpoint(step, row)
            row.update(timing_metrics(t.seconds, time.perf_counter() - step_start, row["samples"], tokens))
            s.log_step(row)
            if s.stop_signal is not None:  # SIGTERM (preemption): the step is done; save it and end the run
                s.stop(step)

        return s.finish(step)


# --------------------------------------------------------------------------- the steps of the loop


def collect_rollout(s: Session, t: Timer) -> Rollout:
    """Steps 1-3: generate and score rounds of prompts until ``rolloutBatchSize`` groups pass dynamic filtering."""
    spec = s.spec
    algo, n, rollout_size = spec.algorithm, spec.algorithm.n_samples_per_prompt, spec.training.rollout_batch_size
    batch = Rollout(n, skip_faulted=(spec.agent or spec.reward).on_error == "skip",
                    whole_groups=algo.advantage_estimator in GROUP_ESTIMATORS)
    while batch.groups < rollout_size and not s.prompts.exhausted:  # filtering refills from the data
        sampling = s.round_sampling()  # seeded by the data position, so a resumed run samples the same
        chunk = s.prompts.take(rollout_size - batch.groups)
        with t("generate"):
            samples = s.agent.rollout(chunk, n, spec.agent) if s.agent else generate(s.cluster, chunk, sampling)
        with t("reward"):
            result = agent_rewards(samples, s.agent.faults) if s.agent else score(s.cluster, s.tokenizer, chunk, samples, n)
        batch.add_round(chunk, samples, result, kept=kept_groups(algo, result.scores, len(chunk)))
        if not algo.dynamic_filtering.enabled:
            break
    return batch


def kept_groups(algo, scores: torch.Tensor, groups: int) -> Sequence[int]:
    """Step 3: the prompt groups dynamic filtering keeps (``lo < mean(score) < hi``); all of them without it."""
    if not algo.dynamic_filtering.enabled:
        return range(groups)
    # the scores tensor as the reward returned it: the filter decides at its precision
    return dynamic_filter(scores, algo.n_samples_per_prompt, tuple(algo.dynamic_filtering.score_range)).kept_groups


def check_reward_faults(faults: FaultWindow, s) -> None:
    """End the run when the reward faulted on too many samples lately; the report says ``RewardFaults``."""
    try:
        faults.check()
    except RewardFaultsExceeded as exc:
        s.progress.update(failure_reason=exc.reason)
        raise


def forward_passes(cluster: Cluster, batch: Rollout, spec, pad_id: int, off_policy: bool = False) -> ForwardPasses:
    """Step 4: the per-token numbers the advantages and the update need, from the workers that hold them.

    ``off_policy``: the batch was sampled by an older policy (``algorithm.async``). As in
    OpenRLHF's asynchronous mode the old logprobs are the trainers' own, and each token's loss is
    weighted by the truncated importance ratio of the trainers' policy to the sampling one
    (:func:`~rlhf_workers.async_rollout.off_policy_correction`). When the old-logprob pass runs
    anyway (several updates, KL in the reward) the weights are taken here; else the trainers take
    them from their update's own forward pass, which sees the same weights (one optimizer step).
    """
    algo, training = spec.algorithm, spec.training
    action_mask = batch.action_mask()
    rollout_logprobs = pad_rows([x.logprobs for x in batch.samples], action_mask.size(1))
    kl_on = algo.kl.coef > 0
    updates = math.ceil(len(batch) / training.train_batch_size) * training.max_epochs
    need_old = (kl_on and not algo.kl.use_loss) or updates > 1
    micro = training.micro_batch_size
    old = _forward(cluster.policy, batch, pad_id, micro, action_mask) if need_old else None
    return ForwardPasses(
        action_mask, rollout_logprobs,
        old_logprobs=old,
        ref_logprobs=_forward(cluster.ref, batch, pad_id, micro, action_mask) if kl_on else None,
        values=_forward(cluster.critic, batch, pad_id, micro, action_mask) if algo.advantage_estimator == "gae" else None,
        off_policy=off_policy_correction(old, rollout_logprobs, action_mask) if off_policy and need_old else None,
    )


def kl_penalty(spec, passes: ForwardPasses) -> Optional[torch.Tensor]:
    """Per-token KL to the reference for the reward, when KL goes into the reward (not as a loss)."""
    kl = spec.algorithm.kl
    if kl.coef > 0 and not kl.use_loss:
        return compute_kl(passes.old_logprobs, passes.ref_logprobs, kl.estimator, passes.action_mask)
    return None


def advantages(spec, batch: Rollout, passes: ForwardPasses, kl: Optional[torch.Tensor]) -> AdvantageResult:
    """Step 5: the spec's estimator over the kept samples' rewards (:func:`~rlhf_workers.algorithms.compute_advantages`)."""
    algo = spec.algorithm
    return compute_advantages(
        algo.advantage_estimator, torch.tensor([x.reward for x in batch.samples]), passes.action_mask, batch.n,
        kl=kl, kl_coef=algo.kl.coef, use_kl_loss=algo.kl.use_loss, values=passes.values,
        gamma=algo.gamma, lambd=algo.lambd,
        reward_clip_range=tuple(spec.reward.clip_range) if spec.reward and spec.reward.clip_range else None,
    )


def update(cluster: Cluster, batch: Rollout, passes: ForwardPasses, adv: AdvantageResult, spec, pad_id: int, *,
           seed: int) -> dict[str, float]:
    """Step 6: PPO epochs on the policy (and the critic, at the same time); the trainers' stats, merged."""
    algo, training = spec.algorithm, spec.training
    schedule = train_schedule(len(batch), training.train_batch_size, training.micro_batch_size,
                              len(cluster.policy), training.max_epochs, seed=seed)
    weighted = passes.off_policy.weigh(adv.advantages) if passes.off_policy else adv.advantages
    fields = dict(advantages=weighted, old_logprobs=passes.old_logprobs,
                  ref_logprobs=passes.ref_logprobs if algo.kl.use_loss else None,
                  rollout_logprobs=passes.rollout_logprobs)
    policy_refs = _train(cluster.policy, batch, schedule, pad_id, fields)
    critic_refs = _train(cluster.critic, batch, schedule, pad_id, dict(returns=adv.returns, old_values=passes.values)) \
        if passes.values is not None else []
    return mean_stats(ray.get(policy_refs) + ray.get(critic_refs))


def check_weight_sync(stats: dict[str, float], step: int) -> None:
    """Warn when the trainer's logprobs of the sampled tokens drift from the engines' (after the first step)."""
    if stats.get("logprob_diff_mean", 0.0) > 0.05 and step > 0:
        logger.warning("rollout and trainer logprobs differ by %.3g on average: weight sync suspect",
                       stats["logprob_diff_mean"])


# --------------------------------------------------------------------------- helpers of the steps


def forward_schedule(samples: int, micro: int, workers: int) -> list[list[list[int]]]:
    """Per worker, micro-batches of sample indices; every worker gets the same count (ZeRO-3 needs it)."""
    per = [[share[i:i + micro] for i in range(0, len(share), micro)] for share in split_evenly(list(range(samples)), workers)]
    count = max(1, max(len(p) for p in per))
    return [p + [[] for _ in range(count - len(p))] for p in per]


def train_schedule(samples: int, train_batch: int, micro: int, workers: int, epochs: int, seed: int
                   ) -> list[list[list[list[int]]]]:
    """Per worker, per optimizer step, exactly ``train_batch / (micro × workers)`` micro-batches.

    Each optimizer step takes ``train_batch`` samples (fewer in the last one), shuffled per
    epoch, split evenly over the workers; a worker's share is split into the gradient
    accumulation count of micro-batches, some possibly empty, so every rank steps together.
    """
    accumulation = max(1, train_batch // (micro * workers))
    rng = random.Random(seed)
    schedule: list[list[list[list[int]]]] = [[] for _ in range(workers)]
    for _ in range(epochs):
        order = list(range(samples))
        rng.shuffle(order)
        for start in range(0, samples, train_batch):
            for w, share in enumerate(split_evenly(order[start:start + train_batch], workers)):
                schedule[w].append(split_evenly(share, accumulation))
    return schedule


def generate(cluster: Cluster, chunk: list[Prompt], sampling: SamplingConfig) -> list[Sample]:
    """``sampling.n`` responses per prompt from the rollout engines, prompt-major."""
    gens = cluster.generate([list(p.token_ids) for p in chunk], sampling)
    return [Sample(p.token_ids, g.token_ids, g.logprobs, g.finish_reason == "length")
            for p, group in zip(chunk, gens) for g in group]


def score(cluster: Cluster, tokenizer, chunk: list[Prompt], samples: list[Sample], n: int) -> RewardResult:
    """reward_func(queries, prompts, labels) over the batch: query = prompt text + response text."""
    responses = tokenizer.batch_decode([x.response_ids for x in samples], skip_special_tokens=True)
    prompt_texts = [p.text for p in chunk for _ in range(n)]
    labels = [p.label for p in chunk for _ in range(n)]
    return cluster.rewards.score([pt + r for pt, r in zip(prompt_texts, responses)], prompt_texts, labels)


def _micro_batch(batch: Rollout, indices: list[int], pad_id: int, fields: Optional[dict] = None) -> MicroBatch:
    if not indices:
        return dummy(pad_id)
    chosen = [batch.samples[i] for i in indices]
    mb = pack([x.prompt_ids for x in chosen], [x.response_ids for x in chosen], pad_id, [x.mask for x in chosen])
    if fields:
        mb = mb.with_fields(**{k: (v[indices] if v is not None else None) for k, v in fields.items()})
    return mb


def _forward(group: RoleGroup, batch: Rollout, pad_id: int, micro: int, action_mask: torch.Tensor) -> torch.Tensor:
    """A ``[B, T]`` tensor of the group's per-token outputs (logprobs or values) for the whole batch."""
    schedule = forward_schedule(len(batch), micro, len(group))
    outputs = group.forward([[_micro_batch(batch, idx, pad_id) for idx in mbs] for mbs in schedule])
    full = torch.zeros_like(action_mask)
    for mbs, outs in zip(schedule, outputs):
        for idx, out in zip(mbs, outs):
            if idx:
                full[idx, :out.size(1)] = out
    return full * action_mask


def _train(group: RoleGroup, batch: Rollout, schedule, pad_id: int, fields: dict) -> list:
    """Start the group's update on ``schedule`` (see :func:`train_schedule`); the refs of its stats."""
    return group.train([[[_micro_batch(batch, idx, pad_id, fields) for idx in step] for step in steps] for steps in schedule])
