"""The RLHFJob API: one pydantic model, the single source of truth.

The CRD's OpenAPI schema (``crds/``) is generated from these classes, the operator
validates with them, and the workers read the very same model from their mounted config.
YAML uses camelCase (``nSamplesPerPrompt``); Python uses snake_case (``n_samples_per_prompt``).

Cross-field rules carry two forms: a Python validator (used by ``rlhf validate``, the
operator and the workers, with a message naming the field path and the fix) and, where
the API server can enforce it, a CEL rule attached to the generated CRD.

The sections follow the YAML from top to bottom; the ``cluster`` section lives in
:mod:`rlhf_api.cluster` and the status in :mod:`rlhf_api.jobstatus`. At about 500 lines this
module is one model read in order, which splitting further would scatter.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Optional

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .base import CEL, DNS_LABEL, SpecModel, snake_case
from .cluster import RESERVED_MOUNT_CEL, VOLUME_SOURCE_SCHEMA, ClusterSpec, check_reserved_path, check_volume_source
from .k8s import as_the_api_server_decodes
from .contract import check_agent_source, check_reward_source
from .names import API_VERSION, KIND


# --------------------------------------------------------------------------- references


class SecretKeyRef(SpecModel):
    """A key of a Secret in the job's namespace. Secrets reach pods as env, never ConfigMaps."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Secret name.")]
    key: Annotated[str, Field(min_length=1, max_length=253, description="Key within the Secret.")]


class ConfigMapKeyRef(SpecModel):
    """A key of a ConfigMap in the job's namespace that holds Python source."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="ConfigMap name.")]
    key: Annotated[
        Optional[str],
        Field(default=None, max_length=253, description="Key within the ConfigMap (default: the role's file name, e.g. reward_func.py)."),
    ] = None


# Inline code is stored in etcd with the object and copied into a ConfigMap (1 MiB max).
MAX_INLINE_CODE = 512 * 1024


class CodeSource(SpecModel):
    """Python source given in exactly one way: inline, from a ConfigMap, or a path in the image/volume."""

    model_config = ConfigDict(json_schema_extra={
        CEL: [{
            "rule": "(has(self.inline) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1",
            "message": "set exactly one of inline, configMapRef or path",
        }],
    })

    inline: Annotated[
        Optional[str],
        Field(default=None, max_length=MAX_INLINE_CODE, description="Python source, inline."),
    ] = None
    config_map_ref: Annotated[
        Optional[ConfigMapKeyRef],
        Field(default=None, description="A ConfigMap key holding the source; snapshotted when the job starts."),
    ] = None
    path: Annotated[
        Optional[str],
        Field(default=None, max_length=4096, description="A file path inside the worker image or a mounted volume (a local path for `rlhf run`)."),
    ] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "CodeSource":
        given = [n for n in ("inline", "configMapRef", "path") if getattr(self, snake_case(n)) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of inline, configMapRef or path (got {', '.join(given) or 'none'})"
            )
        return self

    def kind(self) -> str:
        return "inline" if self.inline is not None else "configMapRef" if self.config_map_ref else "path"


class FunctionReward(CodeSource):
    """A file defining ``reward_func(queries, prompts, labels)`` as in OpenRLHF's --remote_rm_url FILE.py."""

    @field_validator("inline")
    @classmethod
    def _inline_defines_reward_func(cls, source: Optional[str]) -> Optional[str]:
        if source is not None:
            check_reward_source(source)
        return source


class RemoteReward(SpecModel):
    """An HTTP reward server with OpenRLHF's JSON contract: POST {query, prompts, labels} → {rewards, scores?, extra_logs?}."""

    url: Annotated[str, Field(pattern=r"^https?://", max_length=2048, description="Endpoint URL (http or https).")]
    token_secret_ref: Annotated[
        Optional[SecretKeyRef], Field(default=None, description="Bearer token for the server, from a Secret."),
    ] = None
    timeout_seconds: Annotated[float, Field(default=30.0, gt=0, le=3600, description="Timeout of one request.")] = 30.0
    retries: Annotated[int, Field(default=3, ge=0, le=100, description="Retries on connection errors, 429 and 5xx.")] = 3
    batch_size: Annotated[
        Optional[int], Field(default=None, ge=1, description="Samples per request (default: the whole rollout batch)."),
    ] = None


class RewardModel(SpecModel):
    """A sequence-classification reward model, scored on a reward worker (OpenRLHF --reward_pretrain)."""

    path: Annotated[str, Field(min_length=1, max_length=4096, description="HF model id or a local/PVC directory.")]
    batch_size: Annotated[int, Field(default=16, ge=1, description="Samples per forward pass.")] = 16
    normalize: Annotated[bool, Field(default=False, description="Normalize rewards with the model's stored mean/std.")] = False


class RewardFaultPolicy(SpecModel):
    """What happens when a reward call (or an agent step) raises, hangs or returns garbage: a fault, not a low reward."""

    timeout_seconds: Annotated[
        float, Field(default=60.0, gt=0, le=86400, description="Wall-clock seconds one call (one agent step) may take; "
                     "past it the call is killed and counted as a timeout."),
    ] = 60.0
    on_error: Annotated[
        Literal["skip", "fallback"],
        Field(default="skip", description="skip: drop a faulted sample (its whole group for group estimators); "
              "fallback: give it fallbackReward."),
    ] = "skip"
    fallback_reward: Annotated[float, Field(default=0.0, description="The reward of a faulted sample with onError: fallback.")] = 0.0
    max_error_rate: Annotated[
        float, Field(default=0.2, ge=0, le=1, description="Fail the job when more than this share of the samples of the "
                     "last errorWindowSteps steps faulted."),
    ] = 0.2
    error_window_steps: Annotated[
        int, Field(default=5, ge=1, le=10000, description="Steps over which maxErrorRate is measured."),
    ] = 5


class SandboxSpec(SpecModel):
    """Limits of each sandboxed reward process (and of everything it starts)."""

    cpu_seconds: Annotated[float, Field(default=60.0, ge=0, description="CPU seconds of one call (0: no limit).")] = 60.0
    memory_mb: Annotated[
        int, Field(default=8192, ge=0, alias="memoryMB", description="Address space of each process in MiB (0: no "
                   "limit); leaves room for large native libraries such as a CUDA build of torch."),
    ] = 8192
    max_processes: Annotated[
        int, Field(default=256, ge=0, description="Processes the sandbox's user may run at once (0: no limit)."),
    ] = 256
    file_size_mb: Annotated[
        int, Field(default=64, ge=0, alias="fileSizeMB", description="Largest file a sandboxed process may write, MiB."),
    ] = 64
    output_kb: Annotated[
        int, Field(default=64, ge=1, alias="outputKB", description="Output kept per process (the rest is dropped)."),
    ] = 64
    network: Annotated[bool, Field(default=False, description="Let reward code use the network (default: no network).")] = False
    read_paths: Annotated[
        list[str], Field(default_factory=list, max_length=64, description="More paths the reward code may read "
                         "(system and Python directories and the reward file's directory are always readable)."),
    ]
    write_paths: Annotated[
        list[str], Field(default_factory=list, max_length=64, description="Directories the reward code may write, "
                         "besides its private scratch directory (a volume for the programs it grades, say)."),
    ]

    @field_validator("read_paths", "write_paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"must be absolute paths, as the pod sees them (got {path!r})")
        return paths


class RewardSpec(RewardFaultPolicy):
    """Where rewards come from: exactly one of a function file, a remote server or a reward model."""

    model_config = ConfigDict(json_schema_extra={
        CEL: [{
            "rule": "(has(self.function) ? 1 : 0) + (has(self.remote) ? 1 : 0) + (has(self.model) ? 1 : 0) == 1",
            "message": "set exactly one of reward.function, reward.remote or reward.model",
        }],
    })

    function: Annotated[Optional[FunctionReward], Field(default=None, description="A reward_func file (OpenRLHF's custom reward API).")] = None
    remote: Annotated[Optional[RemoteReward], Field(default=None, description="A remote reward server.")] = None
    model: Annotated[Optional[RewardModel], Field(default=None, description="A reward model.")] = None
    clip_range: Annotated[
        Optional[list[float]],
        Field(default=None, min_length=2, max_length=2, description="Clip rewards to [lo, hi] before advantages (OpenRLHF --reward_clip_range)."),
    ] = None
    parallelism: Annotated[
        Optional[int], Field(default=None, ge=1, le=1024, description="Sandboxed processes scoring a function reward's batch "
                             "(default: the reward worker's cores)."),
    ] = None
    batch: Annotated[
        Literal["split", "whole"],
        Field(default="split", description="split: the batch is spread over the processes; whole: one call sees it all."),
    ] = "split"
    sandbox: Annotated[SandboxSpec, Field(default_factory=SandboxSpec, description="Limits of the sandboxed reward processes.")]

    @model_validator(mode="after")
    def _exactly_one(self) -> "RewardSpec":
        given = [n for n in ("function", "remote", "model") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of reward.function, reward.remote or reward.model"
                f" (got {', '.join('reward.' + g for g in given) or 'none'})"
            )
        if self.clip_range is not None and not self.clip_range[0] < self.clip_range[1]:
            raise ValueError("clipRange: must be [lo, hi] with lo < hi")
        return self

    def source(self) -> str:
        return "function" if self.function else "remote" if self.remote else "model"


class AgentSpec(CodeSource, RewardFaultPolicy):
    """A multi-step agent file defining AgentInstance/AgentExecutor (OpenRLHF --agent_func_path)."""

    max_steps: Annotated[int, Field(default=5, ge=1, le=1000, description="Maximum environment steps per episode.")] = 5
    parallelism: Annotated[
        Optional[int], Field(default=None, ge=1, le=1024, description="Sandboxed processes running the episodes, each "
                             "holding many at once (default: the driver's cores)."),
    ] = None
    sandbox: Annotated[SandboxSpec, Field(default_factory=SandboxSpec, description="Limits of the sandboxed agent "
                                          "processes (cpuSeconds: CPU seconds between two messages of an episode).")]

    @field_validator("inline")
    @classmethod
    def _inline_defines_agent(cls, source: Optional[str]) -> Optional[str]:
        if source is not None:
            check_agent_source(source)
        return source


# --------------------------------------------------------------------------- model and data


class ModelSpec(SpecModel):
    """The policy model to train (OpenRLHF --pretrain)."""

    path: Annotated[str, Field(min_length=1, max_length=4096, description="HF model id or a local/PVC directory.")]
    tokenizer_path: Annotated[Optional[str], Field(default=None, description="Tokenizer location if not the model's.")] = None
    critic_path: Annotated[
        Optional[str], Field(default=None, description="Critic initialization for gae (default: the model path; OpenRLHF --critic_pretrain)."),
    ] = None
    trust_remote_code: Annotated[bool, Field(default=False, description="Allow the model's own code to run.")] = False


class DataSpec(SpecModel):
    """Prompt data: JSONL/JSON/Parquet files, a dataset saved with datasets.save_to_disk, or a dataset in
    Hugging Face datasets form: a hub id or a repository directory (OpenRLHF --prompt_data)."""

    prompts: Annotated[str, Field(min_length=1, max_length=4096, description=(
        "A file or directory of prompts (local/PVC path), or a Hugging Face dataset id such as"
        " OpenRLHF/prompt-collection-v0.1; ID@DIR reads the dataset's sub-directory DIR, as OpenRLHF's --prompt_data."))]
    config: Annotated[Optional[str], Field(default=None, min_length=1, max_length=253, description=(
        "Dataset configuration (datasets.load_dataset's name), e.g. main for openai/gsm8k."))] = None
    input_key: Annotated[str, Field(default="input", min_length=1, description="Field holding the prompt (OpenRLHF --input_key).")] = "input"
    label_key: Annotated[
        Optional[str], Field(default=None, description="Field passed to reward_func as labels (OpenRLHF --label_key)."),
    ] = None
    input_template: Annotated[
        Optional[str], Field(default=None, description="Template with one {} for the prompt (OpenRLHF --input_template).",
                             json_schema_extra={"pattern": r"\{\}"}),
    ] = None
    apply_chat_template: Annotated[bool, Field(default=False, description="Wrap prompts with the tokenizer's chat template.")] = False
    max_samples: Annotated[Optional[int], Field(default=None, ge=1, description="Use at most this many prompts.")] = None
    split: Annotated[str, Field(default="train", min_length=1, description="Split to read from a saved DatasetDict or a dataset (OpenRLHF --prompt_split).")] = "train"

    @field_validator("input_template")
    @classmethod
    def _template_has_slot(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and "{}" not in value:
            raise ValueError("inputTemplate must contain '{}' where the prompt goes, e.g. 'Question: {}\\nAnswer:'")
        return value


# --------------------------------------------------------------------------- algorithm


class AdvantageEstimator(str, Enum):
    gae = "gae"
    reinforce = "reinforce"
    reinforce_baseline = "reinforce_baseline"
    rloo = "rloo"
    group_norm = "group_norm"
    dr_grpo = "dr_grpo"


GROUP_ESTIMATORS = ("reinforce_baseline", "rloo", "group_norm", "dr_grpo")


class KLSpec(SpecModel):
    """KL to the reference model: as a per-token reward penalty, or as a loss term (useLoss)."""

    coef: Annotated[float, Field(default=0.0, ge=0, description="KL coefficient (OpenRLHF --init_kl_coef); 0 disables the reference model.")] = 0.0
    estimator: Annotated[Literal["k1", "k2", "k3"], Field(default="k1", description="KL estimator (OpenRLHF --kl_estimator).")] = "k1"
    use_loss: Annotated[bool, Field(default=False, description="Add KL to the policy loss instead of the reward (OpenRLHF --use_kl_loss).")] = False


class DynamicFilteringSpec(SpecModel):
    """Keep a prompt's group only if lo < mean(scores) < hi (OpenRLHF --dynamic_filtering)."""

    model_config = ConfigDict(json_schema_extra={
        CEL: [{"rule": "self.scoreRange[0] < self.scoreRange[1]", "message": "dynamicFiltering.scoreRange must be [lo, hi] with lo < hi"}],
    })

    enabled: Annotated[bool, Field(default=False, description="Enable dynamic filtering.")] = False
    score_range: Annotated[
        list[float],
        Field(min_length=2, max_length=2, description="[lo, hi] bounds, exclusive (OpenRLHF --dynamic_filtering_reward_range)."),
    ] = [0.0, 1.0]

    @field_validator("score_range")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if not value[0] < value[1]:
            raise ValueError(f"scoreRange must be [lo, hi] with lo < hi (got {value})")
        return value


class AsyncSpec(SpecModel):
    """Asynchronous (off-policy) training: rollouts run ahead of the trainer (OpenRLHF --async_train)."""

    enabled: Annotated[bool, Field(default=False, description="Overlap rollout and training.")] = False
    max_staleness: Annotated[int, Field(default=1, ge=1, le=64, description="How many policy versions a rollout may lag behind.")] = 1


class AlgorithmSpec(SpecModel):
    """The RL algorithm: estimator, samples per prompt, KL, PPO clipping, filtering."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={CEL: [
            {
                "rule": "!(self.advantageEstimator in ['rloo', 'group_norm', 'dr_grpo', 'reinforce_baseline']) || self.nSamplesPerPrompt >= 2",
                "message": "group estimators (rloo, group_norm, dr_grpo, reinforce_baseline) need nSamplesPerPrompt >= 2",
            },
            {
                "rule": "!has(self.dynamicFiltering) || !self.dynamicFiltering.enabled || self.nSamplesPerPrompt >= 2",
                "message": "dynamicFiltering needs nSamplesPerPrompt >= 2",
            },
        ]},
    )

    advantage_estimator: Annotated[
        AdvantageEstimator, Field(default=AdvantageEstimator.gae, description="Advantage estimator (OpenRLHF --advantage_estimator)."),
    ] = AdvantageEstimator.gae
    n_samples_per_prompt: Annotated[int, Field(default=1, ge=1, le=1024, description="Responses sampled per prompt.")] = 1
    kl: Annotated[KLSpec, Field(default_factory=KLSpec, description="KL penalty settings.")]
    clip_range: Annotated[float, Field(default=0.2, gt=0, le=10, description="PPO ratio clip ε (OpenRLHF --eps_clip).")] = 0.2
    value_clip: Annotated[float, Field(default=0.2, gt=0, description="Critic value clip (OpenRLHF --value_clip).")] = 0.2
    gamma: Annotated[float, Field(default=1.0, ge=0, le=1, description="Discount factor γ.")] = 1.0
    lambd: Annotated[float, Field(default=0.95, ge=0, le=1, description="GAE λ (OpenRLHF --lambd).")] = 0.95
    entropy_coef: Annotated[float, Field(default=0.0, ge=0, description="Entropy bonus coefficient.")] = 0.0
    dynamic_filtering: Annotated[
        DynamicFilteringSpec, Field(default_factory=DynamicFilteringSpec, description="Dynamic sample filtering by score."),
    ]
    async_: Annotated[
        AsyncSpec, Field(default_factory=AsyncSpec, alias="async", description="Asynchronous training."),
    ]


# --------------------------------------------------------------------------- rollout and training


class RolloutSpec(SpecModel):
    """Generation: which engine, how many, and sampling parameters."""

    backend: Annotated[Literal["vllm", "transformers"], Field(default="vllm", description="vllm, or transformers where vLLM cannot run.")] = "vllm"
    engines: Annotated[int, Field(default=1, ge=1, le=1024, description="Rollout engines (OpenRLHF --vllm_num_engines).")] = 1
    tensor_parallel_size: Annotated[int, Field(default=1, ge=1, le=64, description="GPUs per engine (OpenRLHF --vllm_tensor_parallel_size).")] = 1
    temperature: Annotated[float, Field(default=1.0, ge=0, le=10, description="Sampling temperature.")] = 1.0
    top_p: Annotated[float, Field(default=1.0, gt=0, le=1, description="Nucleus sampling p.")] = 1.0
    top_k: Annotated[int, Field(default=-1, ge=-1, description="Top-k (-1 = off).")] = -1
    max_new_tokens: Annotated[int, Field(default=1024, ge=1, le=1_048_576, description="Maximum response tokens (OpenRLHF --generate_max_len).")] = 1024
    prompt_max_len: Annotated[int, Field(default=1024, ge=1, le=1_048_576, description="Prompts are truncated to this many tokens.")] = 1024
    gpu_memory_utilization: Annotated[float, Field(default=0.9, gt=0, le=1, description="vLLM GPU memory fraction.")] = 0.9
    enable_prefix_caching: Annotated[bool, Field(default=False, description="vLLM prefix caching.")] = False
    enforce_eager: Annotated[bool, Field(default=False, description="Disable CUDA graphs in vLLM.")] = False


class WeightSyncSpec(SpecModel):
    """How new weights reach separate rollout engines (the distributed placement) after each update."""

    method: Annotated[
        Literal["collective", "objectStore"],
        Field(default="collective", description="collective: trainer rank 0 broadcasts to the engines' workers over a "
              "process group of its own (NCCL on GPUs, gloo on CPUs); objectStore: through Ray's object store (fallback)."),
    ] = "collective"
    bucket_mb: Annotated[
        int, Field(default=64, ge=1, le=65536, alias="bucketMB",
                   description="Largest bucket of parameters gathered and broadcast at once, in MiB."),
    ] = 64


class TrainingSpec(SpecModel):
    """Optimization: batch sizes, learning rates, epochs, DeepSpeed ZeRO."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={CEL: [{
            "rule": "self.trainBatchSize % (self.microBatchSize * self.trainers) == 0",
            "message": "trainBatchSize must be a multiple of microBatchSize * trainers",
        }]},
    )

    episodes: Annotated[int, Field(default=1, ge=1, le=100_000, description="Passes over the prompt data (OpenRLHF --num_episodes).")] = 1
    max_steps: Annotated[Optional[int], Field(default=None, ge=1, description="Stop after this many rollout steps (default: data × episodes).")] = None
    rollout_batch_size: Annotated[int, Field(default=1024, ge=1, description="Prompts per rollout step.")] = 1024
    train_batch_size: Annotated[int, Field(default=128, ge=1, description="Samples per optimizer step, across trainers.")] = 128
    micro_batch_size: Annotated[int, Field(default=8, ge=1, description="Samples per forward/backward on one trainer.")] = 8
    learning_rate: Annotated[float, Field(default=1e-6, gt=0, le=1, description="Policy learning rate (OpenRLHF --actor_learning_rate).")] = 1e-6
    critic_learning_rate: Annotated[float, Field(default=9e-6, gt=0, le=1, description="Critic learning rate.")] = 9e-6
    weight_decay: Annotated[float, Field(default=0.0, ge=0, description="AdamW weight decay.")] = 0.0
    warmup_ratio: Annotated[float, Field(default=0.03, ge=0, le=1, description="Fraction of steps for LR warmup.")] = 0.03
    max_grad_norm: Annotated[float, Field(default=1.0, gt=0, description="Gradient clipping norm.")] = 1.0
    max_epochs: Annotated[int, Field(default=1, ge=1, le=100, description="Optimization epochs per rollout batch.")] = 1
    zero_stage: Annotated[int, Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage.")] = 2
    trainers: Annotated[int, Field(default=1, ge=1, le=4096, description="Data-parallel policy trainers (one per GPU).")] = 1
    bf16: Annotated[bool, Field(default=True, description="Train in bfloat16 (off on CPU).")] = True
    gradient_checkpointing: Annotated[bool, Field(default=False, description="Trade compute for memory.")] = False
    offload: Annotated[bool, Field(default=False, description="Offload optimizer state to CPU (OpenRLHF --adam_offload).")] = False
    seed: Annotated[int, Field(default=42, description="Random seed.")] = 42
    weight_sync: Annotated[
        WeightSyncSpec, Field(default_factory=WeightSyncSpec, description="Weight push to separate rollout engines."),
    ]

    @model_validator(mode="after")
    def _divisible(self) -> "TrainingSpec":
        if self.train_batch_size % (self.micro_batch_size * self.trainers):
            raise ValueError(
                f"trainBatchSize: {self.train_batch_size} must be a multiple of microBatchSize × trainers"
                f" ({self.micro_batch_size} × {self.trainers}); adjust one of them"
            )
        return self


class CheckpointSpec(SpecModel):
    """Checkpoints: where, how often, how many. A path that already holds one is resumed from."""

    path: Annotated[str, Field(default="/checkpoints", min_length=1, max_length=4096, description="Directory for checkpoints and the final model.",
                               json_schema_extra={CEL: [{"rule": RESERVED_MOUNT_CEL, "message": "is mounted by the operator in every pod; pick another path"}]})] = "/checkpoints"
    save_steps: Annotated[int, Field(default=-1, ge=-1, description="Save every N steps (-1: only at the end).")] = -1
    max_keep: Annotated[int, Field(default=3, ge=1, le=1000, description="Checkpoints to keep.")] = 3
    volume: Annotated[
        Optional[dict[str, Any]],
        Field(default=None, description="A Kubernetes volume source mounted at path, e.g. {persistentVolumeClaim: {claimName: ckpt}}.",
              json_schema_extra=VOLUME_SOURCE_SCHEMA),
    ] = None

    @field_validator("path")
    @classmethod
    def _not_the_operators(cls, value: str) -> str:
        return check_reserved_path(value)

    @field_validator("volume")
    @classmethod
    def _one_volume_source(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if value is not None:
            check_volume_source(value)
        return value


class WandbSpec(SpecModel):
    project: Annotated[str, Field(min_length=1, description="W&B project.")]
    entity: Annotated[Optional[str], Field(default=None, description="W&B entity (team).")] = None
    run_name: Annotated[Optional[str], Field(default=None, description="Run name (default: the job name).")] = None
    api_key_secret_ref: Annotated[Optional[SecretKeyRef], Field(default=None, description="Secret key holding WANDB_API_KEY.")] = None
    mode: Annotated[Literal["online", "offline", "disabled"], Field(default="online", description="W&B mode.")] = "online"


class LoggingSpec(SpecModel):
    wandb: Annotated[Optional[WandbSpec], Field(default=None, description="Weights & Biases logging.")] = None
    tensorboard: Annotated[bool, Field(default=False, description="Write TensorBoard event files next to the checkpoints.")] = False
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], Field(default="INFO", description="Worker log level.")] = "INFO"


# --------------------------------------------------------------------------- the job


IMMUTABLE_FIELDS = ("model", "data", "reward", "agent", "algorithm", "rollout", "training", "checkpoint", "logging", "cluster",
                    "preflight")
MUTABLE_FIELDS = ("suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")


class RLHFJobSpec(SpecModel):
    """What to train, on what data, with which reward, and on which cluster."""

    model_config = ConfigDict(json_schema_extra={
        CEL: [
            {"rule": "has(self.reward) || has(self.agent)", "message": "set spec.reward (function, remote or model) or spec.agent"},
            {"rule": "!(has(self.reward) && has(self.agent))", "message": "set spec.reward or spec.agent, not both: an agent scores its own episodes"},
            {
                "rule": "!self.algorithm.dynamicFiltering.enabled || has(self.agent) || (has(self.reward) && !has(self.reward.model))",
                "message": "dynamicFiltering needs a function, remote or agent reward (reward models give no scores)",
            },
            {
                "rule": "!self.algorithm.async.enabled || self.cluster.placement != 'colocated'",
                "message": "algorithm.async needs separate rollout engines: set cluster.placement to distributed or auto",
            },
            {
                "rule": "!has(self.cluster.volumes) || self.cluster.volumes.all(v, v.mountPath != self.checkpoint.path"
                        " && v.mountPath + '/' != self.checkpoint.path)",
                "message": "a cluster.volumes mountPath is checkpoint.path; set checkpoint.volume instead",
            },
        ] + [
            {"rule": f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
             "message": f"spec.{f} is immutable: create a new RLHFJob to change it"}
            for f in IMMUTABLE_FIELDS
        ],
    })

    model: Annotated[ModelSpec, Field(description="The policy model.")]
    data: Annotated[DataSpec, Field(description="The prompt data.")]
    reward: Annotated[Optional[RewardSpec], Field(default=None, description="Reward source (unless an agent is given).")] = None
    agent: Annotated[Optional[AgentSpec], Field(default=None, description="A multi-step agent environment (instead of reward).")] = None
    algorithm: Annotated[AlgorithmSpec, Field(default_factory=AlgorithmSpec, description="RL algorithm settings.")]
    rollout: Annotated[RolloutSpec, Field(default_factory=RolloutSpec, description="Generation settings.")]
    training: Annotated[TrainingSpec, Field(default_factory=TrainingSpec, description="Optimization settings.")]
    checkpoint: Annotated[CheckpointSpec, Field(default_factory=CheckpointSpec, description="Checkpointing.")]
    logging: Annotated[LoggingSpec, Field(default_factory=LoggingSpec, description="Metrics logging.")]
    cluster: Annotated[ClusterSpec, Field(default_factory=ClusterSpec, description="Ray cluster shape.")]
    suspend: Annotated[bool, Field(default=False, description="Suspend the job: its Ray cluster is deleted; false resumes from the last checkpoint.")] = False
    backoff_limit: Annotated[int, Field(default=0, ge=0, le=100, description="Retries of the whole RayJob before Failed.")] = 0
    active_deadline_seconds: Annotated[Optional[int], Field(default=None, ge=1, description="Fail the job after this long running.")] = None
    ttl_seconds_after_finished: Annotated[
        Optional[int], Field(default=None, ge=0, description="Keep the finished Ray cluster this long before deleting it."),
    ] = None
    preflight: Annotated[bool, Field(default=True, description="Before the RayJob, run the reward/agent code once on a"
                                     " few rows of the data in a short CPU-only pod (`rlhf run`: before Ray starts); a"
                                     " failure ends the job as RewardCheckFailed before any GPU is taken. false skips it.")] = True

    @model_validator(mode="before")
    @classmethod
    def _decodable(cls, value: Any) -> Any:
        # What the API server stores: no NaN, ±inf or integers beyond int64; a null is an unset field.
        return as_the_api_server_decodes(value)

    @model_validator(mode="after")
    def _cross_field(self) -> "RLHFJobSpec":
        if self.reward is None and self.agent is None:
            raise ValueError("reward: set spec.reward (function, remote or model) or spec.agent")
        if self.reward is not None and self.agent is not None:
            raise ValueError("agent: set spec.reward or spec.agent, not both: an agent scores its own episodes")
        for i, volume in enumerate(self.cluster.volumes):
            if volume.mount_path.rstrip("/") == self.checkpoint.path.rstrip("/"):
                raise ValueError(f"cluster.volumes[{i}].mountPath: {volume.mount_path} is checkpoint.path;"
                                 " set checkpoint.volume instead")
        algo = self.algorithm
        n = algo.n_samples_per_prompt
        if algo.async_.enabled and self.cluster.placement == "colocated":
            raise ValueError(
                "algorithm.async.enabled: the colocated placement runs generation and training in the same processes, "
                "one after the other, so they cannot overlap; set cluster.placement: distributed (auto picks it for "
                "async jobs) or turn async off"
            )
        if algo.advantage_estimator in GROUP_ESTIMATORS and n < 2:
            raise ValueError(
                f"algorithm.nSamplesPerPrompt: must be >= 2 for advantageEstimator {algo.advantage_estimator}"
                " (it compares samples of the same prompt); set nSamplesPerPrompt: 4 or use reinforce/gae"
            )
        if algo.dynamic_filtering.enabled:
            if n < 2:
                raise ValueError("algorithm.nSamplesPerPrompt: must be >= 2 for dynamicFiltering (it filters prompt groups)")
            if self.reward is not None and self.reward.model is not None:
                raise ValueError(
                    "algorithm.dynamicFiltering.enabled: needs scores from reward.function, reward.remote or an agent; a reward model gives none"
                )
        return self


class ObjectMeta(SpecModel):
    """The part of Kubernetes metadata the operator reads."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: Optional[str] = None
    uid: Optional[str] = None
    generation: Optional[int] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        # Children get suffixes such as "-config" and Ray cluster names derive from it. The
        # RayJob takes the job's name, and KubeRay 1.7 refuses RayJob names that are not
        # DNS-1035 labels (a leading letter) as ValidationFailed, a state it never leaves.
        if not DNS_LABEL.match(value) or len(value) > 45 or not value[0].isalpha():
            raise ValueError(
                "metadata.name must be a DNS label (lowercase letters, digits, '-') that starts with a letter,"
                " of at most 45 characters, so that the RayJob, Ray cluster and Service names derived from it"
                " are valid for KubeRay"
            )
        return value


class RLHFJob(SpecModel):
    """A whole RLHFJob object as written in YAML."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    api_version: Literal["rlhf.dev/v1alpha1"] = API_VERSION
    kind: Literal["RLHFJob"] = KIND
    metadata: ObjectMeta
    spec: RLHFJobSpec


# --------------------------------------------------------------------------- helpers


def immutable_changes(old: RLHFJobSpec, new: RLHFJobSpec) -> list[str]:
    """Spec fields that changed but may not change on an existing job."""
    old_d, new_d = old.dump(), new.dump()
    return [f"spec.{f}" for f in IMMUTABLE_FIELDS if old_d.get(f) != new_d.get(f)]
