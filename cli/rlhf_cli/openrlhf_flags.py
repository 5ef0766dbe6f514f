"""The flags of OpenRLHF's ``openrlhf.cli.train_ppo_ray`` and what each becomes in an RLHFJob.

One row per flag, in both generations: the flat names of OpenRLHF up to 0.10.1
(``--n_samples_per_prompt``) and the dotted names from 0.10.2 on
(``--rollout.n_samples_per_prompt``). Names, value types and defaults were read from
``openrlhf/cli/train_ppo_ray.py`` at v0.10.1 and at v0.10.2/0.11 (and from every release since
0.7 for flags that 0.10 dropped: ``--bf16``, ``--prompt_max_len``, ``--generate_max_len``, ...); ``--max_steps``
(agent) is the spelling of OpenRLHF's custom-reward guide. ``rlhf convert`` maps with this
table and docs/convert.md prints it (``rlhf convert --table``), so the two cannot disagree.

A row is one of:

* ``mapped``: the value goes to one spec field as is (``field``; ``openrlhf_default`` is written
  when the flag is absent and OpenRLHF's default differs from the RLHFJob's, so the job means
  the same training as the command);
* ``special``: rlhf_cli.convert decides (a reward file or URL, resources, W&B, paths);
* ``ignored``: accepted with no effect, because the operator decides it or it changes only
  speed (named on stderr with the reason; the conversion is still complete);
* ``unsupported``: the RLHFJob cannot express it (named on stderr; the conversion is incomplete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

UNSET = object()

# How many values a flag takes: bool 0, pair 2, list until the next flag, the rest 1.
KINDS = ("str", "int", "float", "bool", "pair", "list")


@dataclass(frozen=True)
class Flag:
    flat: Optional[str]  # up to OpenRLHF 0.10.1
    dotted: Optional[str]  # OpenRLHF 0.10.2 and later
    kind: str
    status: str  # mapped | special | ignored | unsupported
    field: str = ""  # spec path (mapped), or what the code writes (special)
    note: str = ""
    openrlhf_default: Any = UNSET

    @property
    def key(self) -> str:
        """The name rlhf_cli.convert uses for the row: the flat one when there is one."""
        return (self.flat or self.dotted or "").lstrip("-")

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.flat, self.dotted) if n)


def _m(flat, dotted, field, kind="str", default=UNSET, note=""):
    return Flag(flat, dotted, kind, "mapped", field, note, default)


def _s(flat, dotted, field, kind="str", note=""):
    return Flag(flat, dotted, kind, "special", field, note)


def _i(flat, dotted, kind="str", note=""):
    return Flag(flat, dotted, kind, "ignored", "", note)


def _u(flat, dotted, kind="str", note=""):
    return Flag(flat, dotted, kind, "unsupported", "", note)


_PERF = "changes speed or memory, not the training"
_PLACED = "the operator places the reference, critic and reward models on the job's Ray cluster"

FLAGS: tuple[Flag, ...] = (
    # ---- model, reward, agent
    _m("--pretrain", "--actor.model_name_or_path", "model.path"),
    _m("--critic_pretrain", "--critic.model_name_or_path", "model.criticPath"),
    _s("--remote_rm_url", "--reward.remote_url", "reward.function (a .py file) or reward.remote (an http(s) URL)"),
    _s("--reward_pretrain", "--reward.model_name_or_path", "reward.model.path"),
    _s("--normalize_reward", "--reward.normalize_enable", "reward.model.normalize", "bool",
       "only with a reward model"),
    _s("--reward_clip_range", "--reward.clip_range", "reward.clipRange", "pair",
       "OpenRLHF clips to [-10, 10] by default; the job says so too"),
    _s("--agent_func_path", "--train.agent_func_path", "agent (the file, as for the reward)"),
    _s("--max_steps", None, "agent.maxSteps", "int", "with --agent_func_path"),
    # ---- data
    _m("--prompt_data", "--data.prompt_dataset", "data.prompts"),
    _m("--prompt_split", "--data.prompt_split", "data.split"),
    _m("--input_key", "--data.input_key", "data.inputKey"),
    _m("--label_key", "--data.label_key", "data.labelKey"),
    _m("--input_template", "--data.input_template", "data.inputTemplate"),
    _m("--apply_chat_template", "--data.apply_chat_template", "data.applyChatTemplate", "bool"),
    _m("--max_samples", "--data.max_samples", "data.maxSamples", "int"),
    _u("--prompt_data_probs", "--data.prompt_probs", note="a job reads one prompt source"),
    _u("--disable_fast_tokenizer", "--data.disable_fast_tokenizer", "bool"),
    _i("--dataloader_num_workers", "--data.dataloader_num_workers", "int", _PERF),
    _u("--image_key", "--data.image_key", note="vision-language training is not supported"),
    _u("--max_images_per_prompt", "--data.max_images_per_prompt", "int", "vision-language training is not supported"),
    _u("--freeze_visual_encoder", "--actor.freeze_visual_encoder", "bool", "vision-language training is not supported"),
    # ---- algorithm
    _m("--advantage_estimator", "--algo.advantage.estimator", "algorithm.advantageEstimator"),
    _m("--n_samples_per_prompt", "--rollout.n_samples_per_prompt", "algorithm.nSamplesPerPrompt", "int"),
    _m("--init_kl_coef", "--algo.kl.init_coef", "algorithm.kl.coef", "float", 0.01),
    _m("--kl_estimator", "--algo.kl.estimator", "algorithm.kl.estimator"),
    _m("--use_kl_loss", "--algo.kl.use_loss", "algorithm.kl.useLoss", "bool"),
    _u("--kl_target", "--algo.kl.target", "float", "adaptive KL is not supported"),
    _u("--kl_horizon", "--algo.kl.horizon", "int", "adaptive KL is not supported"),
    _m("--eps_clip", "--actor.eps_clip", "algorithm.clipRange", "float"),
    _u("--eps_clip_low_high", "--actor.eps_clip_low_high", "pair", "one symmetric clip range (algorithm.clipRange)"),
    _u("--dual_clip", "--actor.dual_clip", "float"),
    _s("--policy_loss_type", "--actor.policy_loss_type", "(ppo: the job's loss)", "str", "gspo is not supported"),
    _m("--value_clip", "--critic.value_clip", "algorithm.valueClip", "float", 0.5),
    _m("--gamma", "--algo.advantage.gamma", "algorithm.gamma", "float"),
    _m("--lambd", "--algo.advantage.lambd", "algorithm.lambd", "float", 1.0),
    _m("--entropy_loss_coef", "--actor.entropy_coef", "algorithm.entropyCoef", "float"),
    _u("--no_advantage_std_norm", "--algo.advantage.no_std_norm", "bool"),
    _m("--dynamic_filtering", "--algo.dynamic_filtering_enable", "algorithm.dynamicFiltering.enabled", "bool"),
    _m("--dynamic_filtering_reward_range", "--algo.dynamic_filtering_range", "algorithm.dynamicFiltering.scoreRange", "pair"),
    _m("--async_train", "--train.async_enable", "algorithm.async.enabled", "bool"),
    _m("--async_queue_size", "--train.async_queue_size", "algorithm.async.maxStaleness", "int",
       note="batches the rollout may run ahead"),
    _u("--partial_rollout", "--train.partial_rollout_enable", "bool"),
    _u("--overlong_buffer_len", "--reward.overlong_buffer_len", "float", "reward shaping belongs in reward_func"),
    _u("--overlong_penalty_factor", "--reward.overlong_penalty_factor", "float", "reward shaping belongs in reward_func"),
    _u("--stop_properly_penalty_coef", "--reward.stop_properly_penalty_coef", "float", "reward shaping belongs in reward_func"),
    _u("--ptx_coef", None, "float", "no pretraining loss"),
    _u("--pretrain_data", None, note="no pretraining loss"),
    _u("--pretrain_data_probs", None, note="no pretraining loss"),
    _u("--pretrain_split", None, note="no pretraining loss"),
    _u("--aux_loss_coef", "--actor.aux_loss_coef", "float"),
    _u("--freezing_actor_steps", "--critic.freezing_steps", "int"),
    _u("--enable_vllm_is_correction", "--algo.advantage.is_correction_enable", "bool"),
    _u("--vllm_is_truncated_threshold", "--algo.advantage.is_correction_threshold", "pair"),
    _u("--vllm_is_correction_type", "--algo.advantage.is_correction_type"),
    _u("--use_icepop", None, "bool"),
    # ---- rollout
    _s("--vllm_num_engines", "--vllm.num_engines", "rollout.engines, cluster.rollout", "int"),
    _s("--vllm_tensor_parallel_size", "--vllm.tensor_parallel_size", "rollout.tensorParallelSize, cluster.rollout", "int"),
    _m("--vllm_gpu_memory_utilization", "--vllm.gpu_memory_utilization", "rollout.gpuMemoryUtilization", "float", 0.95),
    _m("--enable_prefix_caching", "--vllm.enable_prefix_caching", "rollout.enablePrefixCaching", "bool"),
    _m("--enforce_eager", "--vllm.enforce_eager", "rollout.enforceEager", "bool"),
    _m("--temperature", "--rollout.temperature", "rollout.temperature", "float"),
    _m("--top_p", "--rollout.top_p", "rollout.topP", "float"),
    _m("--prompt_max_len", None, "rollout.promptMaxLen", "int"),
    _m("--generate_max_len", None, "rollout.maxNewTokens", "int"),
    _m("--max_new_tokens", "--rollout.max_new_tokens", "rollout.maxNewTokens", "int"),
    _s("--max_len", "--data.max_len", "rollout.promptMaxLen + rollout.maxNewTokens", "int",
       "split as max_len - max_new_tokens for the prompt"),
    _s("--colocate_all_models", "--train.colocate_all", "cluster.placement: colocated", "bool"),
    _i("--colocate_actor_ref", "--train.colocate_actor_ref", "bool", _PLACED),
    _i("--colocate_critic_reward", "--train.colocate_critic_reward", "bool", _PLACED),
    _i("--vllm_sync_backend", "--vllm.sync_backend", note="the operator picks the weight sync"),
    _i("--vllm_sync_with_ray", "--vllm.sync_with_ray", "bool", "the operator picks the weight sync"),
    _i("--vllm_enable_sleep", "--vllm.enable_sleep", "bool", _PERF),
    _i("--deepspeed_enable_sleep", "--ds.enable_sleep", "bool", _PERF),
    _i("--micro_rollout_batch_size", "--rollout.micro_batch_size", "int", _PERF),
    _i("--vllm_generate_batch_size", "--rollout.vllm_generate_batch_size", "int", _PERF),
    _i("--rollout_max_tokens_per_gpu", "--rollout.max_tokens_per_gpu", "int", _PERF),
    # ---- training
    _m("--num_episodes", "--train.num_episodes", "training.episodes", "int"),
    _m("--rollout_batch_size", "--rollout.batch_size", "training.rolloutBatchSize", "int"),
    _m("--train_batch_size", "--train.batch_size", "training.trainBatchSize", "int"),
    _m("--micro_train_batch_size", "--train.micro_batch_size", "training.microBatchSize", "int", 1,
       "OpenRLHF before 0.10 defaulted to 4, which a command with one of its flags gets"),
    _m("--actor_learning_rate", "--actor.adam.lr", "training.learningRate", "float"),
    _m("--critic_learning_rate", "--critic.adam.lr", "training.criticLearningRate", "float"),
    _m("--l2", "--actor.adam.weight_decay", "training.weightDecay", "float"),
    _m("--lr_warmup_ratio", "--actor.lr_warmup_ratio", "training.warmupRatio", "float"),
    _m("--max_norm", "--actor.max_norm", "training.maxGradNorm", "float"),
    _m("--max_epochs", "--train.max_epochs", "training.maxEpochs", "int"),
    _m("--zero_stage", "--ds.zero_stage", "training.zeroStage", "int"),
    _m("--bf16", None, "training.bf16", "bool"),
    _s("--param_dtype", "--ds.param_dtype", "training.bf16", "str", "bf16 → true, fp32 → false; fp16 is not supported"),
    _m("--gradient_checkpointing", "--actor.gradient_checkpointing_enable", "training.gradientCheckpointing", "bool"),
    _m("--adam_offload", "--ds.adam_offload", "training.offload", "bool"),
    _m("--seed", "--train.seed", "training.seed", "int"),
    _s("--actor_num_nodes", "--actor.num_nodes", "training.trainers, cluster.trainer.replicas", "int"),
    _s("--actor_num_gpus_per_node", "--actor.num_gpus_per_node", "training.trainers, cluster.trainer.gpus", "int"),
    _i("--ref_num_nodes", "--ref.num_nodes", "int", _PLACED),
    _i("--ref_num_gpus_per_node", "--ref.num_gpus_per_node", "int", _PLACED),
    _i("--critic_num_nodes", "--critic.num_nodes", "int", _PLACED),
    _i("--critic_num_gpus_per_node", "--critic.num_gpus_per_node", "int", _PLACED),
    _i("--reward_num_nodes", "--reward.num_nodes", "int", _PLACED),
    _i("--reward_num_gpus_per_node", "--reward.num_gpus_per_node", "int", _PLACED),
    _i("--ref_reward_offload", "--ref.offload", "bool", _PERF),
    _i(None, "--reward.offload", "bool", _PERF),
    _u("--lr_scheduler", "--actor.lr_scheduler", note="the job warms up, then decays by cosine"),
    _u("--adam_betas", "--actor.adam.betas", "pair"),
    _u("--value_head_prefix", "--ds.value_head_prefix"),
    _i(None, "--ds.experts_implementation", note=_PERF),
    _u("--lora_rank", "--ds.lora.rank", "int", "LoRA is not supported"),
    _u("--lora_alpha", "--ds.lora.alpha", "int", "LoRA is not supported"),
    _u("--lora_dropout", "--ds.lora.dropout", "float", "LoRA is not supported"),
    _u("--target_modules", "--ds.lora.target_modules", "list", "LoRA is not supported"),
    _u("--load_in_4bit", "--ds.load_in_4bit", "bool"),
    _u("--enable_ema", "--train.enable_ema", "bool"),
    _u("--ema_beta", "--train.ema_beta", "float"),
    _u("--full_determinism", "--train.full_determinism_enable", "bool"),
    _i("--flash_attn", None, "bool", "the workers pick the attention kernel"),
    _i("--attn_implementation", "--ds.attn_implementation", note="the workers pick the attention kernel"),
    _i("--packing_samples", "--ds.packing_samples", "bool", _PERF),
    _i("--use_dynamic_batch", "--train.dynamic_batch_enable", "bool", _PERF),
    _i("--train_max_tokens_per_gpu", "--train.max_tokens_per_gpu", "int", _PERF),
    _i("--ring_attn_size", "--ds.ring_attn_size", "int", _PERF),
    _i("--ring_head_stride", "--ds.ring_attn_head_stride", "int", _PERF),
    _i("--ds_tensor_parallel_size", "--ds.tensor_parallel_size", "int", _PERF),
    _i("--use_liger_kernel", "--ds.use_liger_kernel", "bool", _PERF),
    _i("--overlap_comm", "--ds.overlap_comm", "bool", _PERF),
    _i("--deepcompile", "--ds.deepcompile", "bool", _PERF),
    _i("--torch_compile", None, "bool", _PERF),
    _i("--zpg", "--ds.zpg", "int", _PERF),
    _i("--grad_accum_dtype", "--ds.grad_accum_dtype", note=_PERF),
    _i("--gradient_checkpointing_use_reentrant", "--actor.gradient_checkpointing_reentrant", "bool", _PERF),
    _i("--actor_init_on_gpu", None, "bool", _PERF),
    _i("--local_rank", None, "int", "set by the launcher"),
    # ---- checkpoints
    _s("--ckpt_path", "--ckpt.path", "checkpoint.path", "str", "a relative path goes under /checkpoints"),
    _s("--save_path", "--ckpt.output_dir", "checkpoint.path (the final model goes there)"),
    _m("--save_steps", "--ckpt.save_steps", "checkpoint.saveSteps", "int"),
    _m("--max_ckpt_num", "--ckpt.max_num", "checkpoint.maxKeep", "int"),
    _u("--max_ckpt_mem", "--ckpt.max_mem", "float", "checkpoints are bounded by count (checkpoint.maxKeep)"),
    _i("--load_checkpoint", "--ckpt.load_enable", "bool", "a job resumes from checkpoint.path on its own"),
    _i("--save_hf_ckpt", "--ckpt.save_hf", "bool", "the final model is saved in Hugging Face format"),
    _u("--disable_ds_ckpt", "--ckpt.disable_ds", "bool"),
    _u("--use_ds_universal_ckpt", "--ds.use_universal_ckpt", "bool"),
    _u("--save_value_network", "--critic.save_value_network", "bool"),
    _u("--best_metric_key", "--ckpt.best_metric_key", note="no evaluation set"),
    _u("--eval_steps", "--eval.steps", "int", "no evaluation set"),
    _u("--eval_dataset", "--eval.dataset", note="no evaluation set"),
    _u("--eval_split", "--eval.split", note="no evaluation set"),
    _u("--eval_temperature", "--eval.temperature", "float", "no evaluation set"),
    _u("--eval_n_samples_per_prompt", "--eval.n_samples_per_prompt", "int", "no evaluation set"),
    # ---- logging
    _s("--use_wandb", "--logger.wandb.key", "logging.wandb.apiKeySecretRef", "str",
       "the key is never written: create the Secret the job names"),
    _s("--wandb_project", "--logger.wandb.project", "logging.wandb.project"),
    _s("--wandb_org", "--logger.wandb.org", "logging.wandb.entity"),
    _s("--wandb_run_name", "--logger.wandb.run_name", "logging.wandb.runName"),
    _u("--wandb_group", "--logger.wandb.group"),
    _s("--use_tensorboard", "--logger.tensorboard_dir", "logging.tensorboard: true", "str",
       "event files go next to the checkpoints"),
    _i("--logging_steps", "--logger.logging_steps", "int", "every step is logged"),
    _i("--perf", None, "bool", "timings are in metrics.jsonl"),
    _u("--use_ms", None, "bool", "ModelScope downloads are not supported"),
) + tuple(  # 0.10.2's per-role optimizer flags beyond the learning rates mapped above
    _u(None, f"--{role}.{name}", kind, note)
    for role in ("actor", "critic")
    for name, kind, note in (
        ("optim", "str", "AdamW only"),
        ("muon.lr", "float", "Muon is not supported"),
        ("muon.momentum", "float", "Muon is not supported"),
        ("muon.ns_steps", "int", "Muon is not supported"),
        ("muon.nesterov", "bool", "Muon is not supported"),
        ("muon.no_nesterov", "bool", "Muon is not supported"),
        ("adam.eps", "float", ""),
        ("min_lr_ratio", "float", "the job decays to 0"),
    ) + ((("adam.betas", "pair", ""),) if role == "critic" else ()) + ((
        ("adam.weight_decay", "float", "the critic shares training.weightDecay"),
        ("lr_scheduler", "str", "the critic shares the policy's schedule"),
        ("lr_warmup_ratio", "float", "the critic shares training.warmupRatio"),
        ("max_norm", "float", "the critic shares training.maxGradNorm"),
    ) if role == "critic" else ())
)

BY_NAME: dict[str, Flag] = {name: flag for flag in FLAGS for name in flag.names()}

# Flags that only OpenRLHF before 0.10 had: a command using one was written for those releases,
# whose defaults differ from 0.10's where this table says so.
BEFORE_0_10 = ("--prompt_max_len", "--generate_max_len", "--bf16", "--flash_attn", "--pretrain_data",
               "--pretrain_data_probs", "--pretrain_split")
DEFAULTS_BEFORE_0_10 = {"training.microBatchSize": 4}


def arity(flag: Flag) -> int:
    """Values the flag takes: 0 (a switch), 1, 2, or -1 (all until the next flag)."""
    return {"bool": 0, "pair": 2, "list": -1}.get(flag.kind, 1)


def _cell(text: Optional[str]) -> str:
    return f"`{text}`" if text else "—"


def _meaning(flag: Flag) -> str:
    if flag.status == "mapped":
        default = "" if flag.openrlhf_default is UNSET else f" (OpenRLHF's default {flag.openrlhf_default} is written when absent)"
        return f"`spec.{flag.field}`{default}" + (f"; {flag.note}" if flag.note else "")
    if flag.status == "special":
        return flag.field + (f"; {flag.note}" if flag.note else "")
    word = "ignored" if flag.status == "ignored" else "not converted"
    return f"{word}" + (f": {flag.note}" if flag.note else "")


def flag_table_markdown() -> str:
    """The migration table of docs/convert.md, one row per flag."""
    rows = ["| OpenRLHF ≤ 0.10.1 | OpenRLHF ≥ 0.10.2 | RLHFJob |", "| --- | --- | --- |"]
    rows += [f"| {_cell(f.flat)} | {_cell(f.dotted)} | {_meaning(f)} |" for f in FLAGS]
    return "\n".join(rows) + "\n"
