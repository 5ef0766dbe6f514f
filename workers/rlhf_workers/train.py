"""The training loop. Read it top to bottom: this file is the whole algorithm.

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

Metrics per step (``metrics.jsonl``): ``step``, ``episode``, ``reward/mean|std|min|max`` and
``score/mean`` over every sample generated in the step, ``reward/mean_trained`` over the
samples trained on (they differ only with dynamic filtering), ``filter/pass_rate``,
``filter/groups_generated``, ``kl`` (0 without a reference model), ``policy_loss``,
``clip_fraction``, ``ppo_kl``, ``grad_norm``, ``lr``, ``entropy`` (with an entropy bonus),
``critic_loss`` / ``values`` (gae), ``response_length/mean|max``, ``response/clip_ratio``
(responses cut at ``maxNewTokens``), ``rollout/logprob_diff_mean|max`` (engine vs trainer
logprobs of the sampled tokens: the weight-sync check), ``samples``, ``samples_per_second``,
``advantages/zero_groups`` (trained prompt groups whose rewards tie: no signal; group estimators),
``tokens_per_second`` (generation), ``time/generate|reward|logprobs|advantages|update|weight_sync|checkpoint|step``,
and ``extra/<key>`` for every ``extra_logs`` key of the reward.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import ray
import torch

from rlhf_api.names import ENV_REWARD_TOKEN
from rlhf_api.progress import CheckpointInfo, utc_now
from rlhf_api.workerconfig import WorkerConfig

from .agent import AgentRunner, agent_rewards
from .algorithms import compute_advantages, compute_kl, dynamic_filter
from .batch import MicroBatch, dummy, pack, pad_rows
from .checkpoint import Checkpoint, Checkpoints
from .cluster import Cluster, RoleGroup, resolve_placement, split_evenly
from .data import Prompt, PromptStream, load_prompts, load_tokenizer
from .metrics import CURVE_FILE, MetricsLog, ProgressServer, plot_reward_curve
from .reward import RewardResult
from .rollout import Sample, SamplingConfig
from .step_metrics import Timer, kl_metric, mean_stats, rollout_metrics, timing_metrics, update_metrics

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final_model"
CHECKPOINT_DIR = "checkpoints"


class Reporter(Protocol):
    """Where the driver tells a human how it goes (a rich progress bar locally, log lines in a cluster)."""

    def start(self, total_steps: int, first_step: int) -> None: ...
    def step(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class LogReporter:
    def start(self, total_steps, first_step):
        logger.info("training steps %d..%d", first_step + 1, total_steps)

    def step(self, row):
        logger.info("step %d/%s reward %.4f score %.4f kl %.4g loss %.4g %.2fs", row["step"], row.get("total_steps"),
                    row["reward/mean"], row["score/mean"], row["kl"], row.get("policy_loss", float("nan")),
                    row["time/step"])

    def message(self, text):
        logger.info("%s", text)

    def close(self):
        pass


@dataclass
class TrainResult:
    steps: int  #: steps completed, counting resumed ones
    resumed_from: Optional[int]
    history: list[dict[str, Any]]
    output_dir: Path
    final_model: Optional[Path]
    placement: str


@dataclass
class Rollout:
    """The samples of one step, prompt-major: group g holds samples g*n .. g*n+n-1."""

    n: int
    prompts: list[Prompt] = field(default_factory=list)  #: one per group
    samples: list[Sample] = field(default_factory=list)

    @property
    def groups(self) -> int:
        return len(self.prompts)

    def __len__(self) -> int:
        return len(self.samples)

    def add_group(self, prompt: Prompt, samples: list[Sample]) -> None:
        self.prompts.append(prompt)
        self.samples += samples

    def action_mask(self) -> torch.Tensor:
        return pad_rows([s.mask if s.mask is not None else [1.0] * len(s.response_ids) for s in self.samples])


def total_steps_for(spec, num_prompts: int, max_steps: Optional[int]) -> int:
    """Rollout steps: the data × episodes in rollout batches, capped by training.maxSteps / --max-steps."""
    steps = math.ceil(num_prompts * spec.training.episodes / spec.training.rollout_batch_size)
    for cap in (spec.training.max_steps, max_steps):
        if cap is not None:
            steps = min(steps, cap)
    return steps


def reward_source(config: WorkerConfig) -> tuple[str, dict]:
    """What the reward workers load: ("function", {path}), ("remote", {...}) or ("model", {...})."""
    import os

    reward = config.spec.reward
    if reward.function is not None:
        if not config.reward_code_path:
            raise ValueError("reward.function: the worker config names no reward_code_path (the reward file)")
        return "function", {"path": config.reward_code_path}
    if reward.remote is not None:
        r = reward.remote
        return "remote", {"url": r.url, "token": os.environ.get(ENV_REWARD_TOKEN) if r.token_secret_ref else None,
                          "timeout_s": r.timeout_seconds, "retries": r.retries, "batch_size": r.batch_size}
    m = reward.model
    return "model", {"path": m.path, "batch_size": m.batch_size, "normalize": m.normalize}


def train(config: WorkerConfig, *, max_steps: Optional[int] = None, reporter: Optional[Reporter] = None,
          progress: Optional[ProgressServer] = None, threads: Optional[int] = None) -> TrainResult:
    """Run (or resume) the job described by ``config`` on the connected Ray cluster."""
    spec = config.spec
    algo, training, rollout_spec = spec.algorithm, spec.training, spec.rollout
    if algo.async_.enabled:
        logger.warning("algorithm.async is not implemented yet: training synchronously (on-policy)")
    n = algo.n_samples_per_prompt
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reporter = reporter or LogReporter()
    own_progress = progress is None
    progress = progress or ProgressServer(config.progress_port)
    progress.update(state="starting", message="loading data and starting workers")
    random.seed(training.seed)
    torch.manual_seed(training.seed)

    # ---------------------------------------------------------------- data, checkpoints, workers
    tokenizer = load_tokenizer(spec.model)
    prompts = PromptStream(load_prompts(spec.data, tokenizer, rollout_spec.prompt_max_len), training.episodes, training.seed)
    total_steps = total_steps_for(spec, len(prompts), max_steps)
    optimizer_steps_per_rollout = math.ceil(training.rollout_batch_size * n / training.train_batch_size) * training.max_epochs
    checkpoints = Checkpoints(out / CHECKPOINT_DIR, spec.checkpoint.max_keep)
    resume = checkpoints.latest()
    placement = resolve_placement(spec)
    reporter.message(f"{len(prompts)} prompts, {total_steps} steps, placement {placement}, rollout {rollout_spec.backend}")
    cluster = Cluster.start(
        spec, placement=placement, reward=reward_source(config) if spec.reward else None, threads=threads,
        total_optimizer_steps=max(1, total_steps * optimizer_steps_per_rollout),
        max_model_len=_max_model_len(spec),
    )
    metrics: Optional[MetricsLog] = None
    step = 0
    try:
        agent = None
        if spec.agent is not None:  # multi-step episodes: the agent generates through the engines and scores itself
            agent = AgentRunner(config.agent_code_path, cluster, tokenizer, spec.agent.max_steps,
                                _max_model_len(spec), rollout_spec)
        if resume is not None:
            cluster.load_checkpoint(str(resume.path), resume.tag)
            prompts.restore(resume.state["data"])
            step = resume.step
            cluster.weight_sync.push()  # the engines start from the initial weights
            reporter.message(f"resumed from {resume.path} (step {step}, episode {prompts.episode}, prompt {prompts.offset})")
        metrics = MetricsLog(out, spec.logging, job_name=config.job_name, resume_step=step,
                             config=spec.model_dump(mode="json", by_alias=True))
        sampling = SamplingConfig.from_spec(rollout_spec, n)
        pad_id = tokenizer.pad_token_id
        last_sync = last_ckpt = None
        progress.update(state="training", step=step, total_steps=total_steps, message=None,
                        **(_resumed_progress(resume, metrics.history) if resume is not None else {}))
        reporter.start(total_steps, step)

        while step < total_steps and not prompts.exhausted:
            t = Timer()
            step_start = time.perf_counter()
            episode = prompts.episode

            # ---------------------------------------------------- 1-3. rollout, reward, dynamic filtering
            batch = Rollout(n)
            results: list[RewardResult] = []
            generated: list[Sample] = []
            groups_generated = 0
            while batch.groups < training.rollout_batch_size and not prompts.exhausted:
                chunk = prompts.take(training.rollout_batch_size - batch.groups)
                with t("generate"):
                    samples = agent.rollout(chunk, n) if agent else generate(cluster, chunk, sampling)
                with t("reward"):
                    result = agent_rewards(samples) if agent else score(cluster, tokenizer, chunk, samples, n)
                results.append(result)
                for sample, r, sc in zip(samples, result.rewards.tolist(), result.scores.tolist()):
                    sample.reward, sample.score = r, sc
                generated += samples
                groups_generated += len(chunk)
                if algo.dynamic_filtering.enabled:
                    # the scores tensor as the reward returned it: the filter decides at its precision
                    kept = dynamic_filter(result.scores, n, tuple(algo.dynamic_filtering.score_range)).kept_groups
                else:
                    kept = range(len(chunk))
                for g in kept:
                    batch.add_group(chunk[g], samples[g * n:(g + 1) * n])
                if not algo.dynamic_filtering.enabled:
                    break
            reward_result = RewardResult.concat(results)
            for warning in reward_result.warnings:
                logger.warning("reward: %s", warning)
            progress.update(step=step, episode=episode)

            row: dict[str, Any] = {"step": step + 1, "total_steps": total_steps, "episode": episode}
            if len(batch):
                # ------------------------------------------------ 4. forward passes: old policy, reference, critic
                num_samples = len(batch)
                action_mask = batch.action_mask()
                rollout_logprobs = pad_rows([x.logprobs for x in batch.samples], action_mask.size(1))
                kl_on = algo.kl.coef > 0
                kl_in_reward = kl_on and not algo.kl.use_loss
                updates = math.ceil(num_samples / training.train_batch_size) * training.max_epochs
                need_old = kl_in_reward or updates > 1
                with t("logprobs"):
                    old_logprobs = _forward(cluster.policy, batch, pad_id, training.micro_batch_size, action_mask) if need_old else None
                    ref_logprobs = _forward(cluster.ref, batch, pad_id, training.micro_batch_size, action_mask) if kl_on else None
                    values = _forward(cluster.critic, batch, pad_id, training.micro_batch_size, action_mask) \
                        if algo.advantage_estimator == "gae" else None

                # ------------------------------------------------ 5. advantages
                with t("advantages"):
                    kl = compute_kl(old_logprobs, ref_logprobs, algo.kl.estimator, action_mask) if kl_in_reward else None
                    adv = compute_advantages(
                        algo.advantage_estimator, torch.tensor([x.reward for x in batch.samples]), action_mask, n,
                        kl=kl, kl_coef=algo.kl.coef, use_kl_loss=algo.kl.use_loss, values=values,
                        gamma=algo.gamma, lambd=algo.lambd,
                        reward_clip_range=tuple(spec.reward.clip_range) if spec.reward and spec.reward.clip_range else None,
                    )

                # ------------------------------------------------ 6. update (policy and critic together)
                with t("update"):
                    schedule = train_schedule(num_samples, training.train_batch_size, training.micro_batch_size,
                                              len(cluster.policy), training.max_epochs, seed=training.seed + step)
                    fields = dict(advantages=adv.advantages, old_logprobs=old_logprobs,
                                  ref_logprobs=ref_logprobs if algo.kl.use_loss else None, rollout_logprobs=rollout_logprobs)
                    policy_refs = _train(cluster.policy, batch, schedule, pad_id, fields)
                    critic_refs = _train(cluster.critic, batch, schedule, pad_id,
                                         dict(returns=adv.returns, old_values=values)) if values is not None else []
                    stats = mean_stats(ray.get(policy_refs) + ray.get(critic_refs))

                # ------------------------------------------------ 7. weight sync
                with t("weight_sync"):
                    cluster.weight_sync.push()
                last_sync = utc_now()

                row.update(update_metrics(batch.samples, kl_metric(kl, action_mask, stats, algo.kl.coef), adv, stats))
                if stats.get("logprob_diff_mean", 0.0) > 0.05 and step > 0:
                    logger.warning("rollout and trainer logprobs differ by %.3g on average: weight sync suspect",
                                   stats["logprob_diff_mean"])
            else:
                reporter.message(f"step {step + 1}: no prompt group passed dynamic filtering; nothing to train on")
                row.update({"samples": 0, "kl": 0.0})

            # ---------------------------------------------------- 8. metrics, progress, checkpoint
            step += 1
            row.update(rollout_metrics(generated, batch.groups, groups_generated, reward_result.extra_logs))
            tokens_generated = agent.client.take_token_count() if agent else sum(len(x.response_ids) for x in generated)
            if spec.checkpoint.save_steps > 0 and step % spec.checkpoint.save_steps == 0 and step < total_steps:
                with t("checkpoint"):
                    last_ckpt = _save(cluster, checkpoints, step, prompts, total_steps)
            row.update(timing_metrics(t.seconds, time.perf_counter() - step_start, row["samples"], tokens_generated))
            metrics.log(row)
            reporter.step(row)
            progress.update(step=step, episode=prompts.episode, reward_mean=row["reward/mean"], score_mean=row["score/mean"],
                            kl=row["kl"], samples_per_second=row["samples_per_second"], last_weight_sync=last_sync,
                            last_checkpoint=last_ckpt)

        # -------------------------------------------------------- the end: checkpoint, final model, curve
        if resume is None or step > resume.step:
            last_ckpt = _save(cluster, checkpoints, step, prompts, total_steps)
            progress.update(last_checkpoint=last_ckpt)
        final = out / FINAL_MODEL_DIR
        cluster.save_hf(str(final))
        tokenizer.save_pretrained(str(final))
        plot_reward_curve(metrics.history, out / CURVE_FILE)
        progress.update(state="finished", step=step, message=f"final model in {final}", final_model=str(final))
        return TrainResult(step, resume.step if resume else None, metrics.history, out, final, placement)
    except BaseException as exc:
        progress.update(state="failed", message=str(exc)[:2000])
        raise
    finally:
        reporter.close()
        if metrics is not None:
            metrics.close()
        cluster.shutdown()
        if own_progress:
            progress.close()


# --------------------------------------------------------------------------- helpers of the loop


def _max_model_len(spec) -> int:
    """Prompt + response budget of the engines, within the model's position limit."""
    from transformers import AutoConfig

    wanted = spec.rollout.prompt_max_len + spec.rollout.max_new_tokens
    config = AutoConfig.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    return min(wanted, limit) if limit else wanted


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


def _resumed_progress(resume: Checkpoint, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What a resumed driver reports at once: the checkpoint it resumed from, and the last step's numbers."""
    report: dict[str, Any] = {"last_checkpoint": CheckpointInfo(
        step=resume.step, path=str(resume.path), time=resume.state.get("time") or utc_now())}
    last = history[-1] if history and history[-1].get("step") == resume.step else {}
    for key, field in (("reward/mean", "reward_mean"), ("score/mean", "score_mean"), ("kl", "kl"),
                       ("samples_per_second", "samples_per_second")):
        if last.get(key) is not None:
            report[field] = last[key]
    return report


def _save(cluster: Cluster, checkpoints: Checkpoints, step: int, prompts: PromptStream, total_steps: int) -> CheckpointInfo:
    path = checkpoints.path_for(step)
    cluster.save_checkpoint(str(path), path.name)
    checkpoints.commit(step, {"data": prompts.state(), "total_steps": total_steps, "time": utc_now()})
    return CheckpointInfo(step=step, path=str(path), time=utc_now())
