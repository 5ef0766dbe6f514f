"""The RLHFJob API: one pydantic model, the single source of truth.

The CRD's OpenAPI schema (``crds/``) is generated from these classes, the operator
validates with them, and the workers read the very same model from their mounted config.
YAML uses camelCase (``nSamplesPerPrompt``); Python uses snake_case (``n_samples_per_prompt``).

Cross-field rules carry two forms: a Python validator (used by ``rlhf validate``, the
operator and the workers, with a message naming the field path and the fix) and, where
the API server can enforce it, a CEL rule attached to the generated CRD.
"""

from __future__ import annotations

import ast
import re
from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ["rlhf"]

# Metadata keys understood by the schema generator (see rlhf_operator.crd).
CEL = "x-cel"  # list of {"rule", "message"} attached to an object's schema
INT_OR_STRING = "x-int-or-string"
FREE_FORM = "x-free-form"

# A Kubernetes resource quantity: a non-negative decimal with an optional SI/binary suffix or exponent.
_QUANTITY = re.compile(r"^\+?(\d+\.?\d*|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SpecModel(BaseModel):
    """Base for every part of the spec: camelCase in YAML, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=False,
    )

    def dump(self) -> dict[str, Any]:
        """The YAML/JSON form: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


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
        given = [n for n in ("inline", "configMapRef", "path") if getattr(self, _snake(n)) is not None]
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


class RewardSpec(SpecModel):
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


class AgentSpec(CodeSource):
    """A multi-step agent file defining AgentInstance/AgentExecutor (OpenRLHF --agent_func_path)."""

    max_steps: Annotated[int, Field(default=5, ge=1, le=1000, description="Maximum environment steps per episode.")] = 5

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
    """Prompt data: JSONL/JSON/Parquet files or a dataset saved with datasets.save_to_disk (OpenRLHF --prompt_data)."""

    prompts: Annotated[str, Field(min_length=1, max_length=4096, description="File or directory of prompts (local/PVC path).")]
    input_key: Annotated[str, Field(default="input", min_length=1, description="Field holding the prompt (OpenRLHF --input_key).")] = "input"
    label_key: Annotated[
        Optional[str], Field(default=None, description="Field passed to reward_func as labels (OpenRLHF --label_key)."),
    ] = None
    input_template: Annotated[
        Optional[str], Field(default=None, description="Template with one {} for the prompt (OpenRLHF --input_template)."),
    ] = None
    apply_chat_template: Annotated[bool, Field(default=False, description="Wrap prompts with the tokenizer's chat template.")] = False
    max_samples: Annotated[Optional[int], Field(default=None, ge=1, description="Use at most this many prompts.")] = None
    split: Annotated[str, Field(default="train", description="Split to read from a saved DatasetDict.")] = "train"

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

    path: Annotated[str, Field(default="/checkpoints", min_length=1, max_length=4096, description="Directory for checkpoints and the final model.")] = "/checkpoints"
    save_steps: Annotated[int, Field(default=-1, ge=-1, description="Save every N steps (-1: only at the end).")] = -1
    max_keep: Annotated[int, Field(default=3, ge=1, le=1000, description="Checkpoints to keep.")] = 3
    volume: Annotated[
        Optional[dict[str, Any]],
        Field(default=None, description="A Kubernetes volume source mounted at path, e.g. {persistentVolumeClaim: {claimName: ckpt}}.",
              json_schema_extra={FREE_FORM: True}),
    ] = None

    @field_validator("volume")
    @classmethod
    def _one_volume_source(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if value is not None:
            _check_volume_source(value)
        return value


# What KubeRay 1.7 sets on the Ray container (common/pod.go setContainerEnvVars): a user value
# either duplicates the entry or, for RAY_ADDRESS and RAY_PORT, replaces KubeRay's and points
# the driver away from its cluster.
KUBERAY_ENV = frozenset({
    "RAY_ADDRESS", "RAY_PORT", "RAY_IP", "FQ_RAY_IP", "RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE",
    "RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME", "KUBERAY_GEN_RAY_START_CMD", "RAY_USAGE_STATS_EXTRA_TAGS",
})
OPERATOR_ENV = frozenset({"RLHF_JOB_NAME", "RLHF_CONFIG"})
RESERVED_VOLUMES = {"rlhf-config", "rlhf-code", "dshm", "checkpoints"}
RESERVED_MOUNTS = {"/etc/rlhf/config", "/etc/rlhf/code", "/dev/shm"}


def _check_volume_source(source: dict[str, Any]) -> None:
    from .podsecurity import ALLOWED_VOLUME_TYPES

    if len(source) != 1 or not isinstance(next(iter(source.values())), dict):
        raise ValueError("must be one Kubernetes volume source, e.g. {persistentVolumeClaim: {claimName: my-pvc}}")
    kind = next(iter(source))
    if kind not in ALLOWED_VOLUME_TYPES:
        raise ValueError(f"volume type {kind!r} is not allowed for pods under the restricted Pod Security Standard;"
                         f" use one of {', '.join(sorted(ALLOWED_VOLUME_TYPES))}")


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


# --------------------------------------------------------------------------- cluster


Quantity = Annotated[
    Union[int, str],
    Field(json_schema_extra={INT_OR_STRING: True}),
]


def _check_quantity(value: Any, field: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, float) or isinstance(value, bool):
        raise ValueError(f"must be a whole number or a quoted quantity such as \"500m\" or \"1.5\" (got {value!r})")
    text = str(value)
    if not _QUANTITY.match(text):
        raise ValueError(f"must be a Kubernetes quantity such as 4, 500m or 16Gi (got {value!r})")
    return text


class GroupSpec(SpecModel):
    """Pods of one Ray group: how many, and what each gets."""

    replicas: Annotated[int, Field(default=1, ge=0, le=10_000, description="Pods in the group (ignored for the head).")] = 1
    gpus: Annotated[int, Field(default=0, ge=0, le=64, description="GPUs per pod.")] = 0
    cpu: Annotated[Optional[Quantity], Field(default=None, description="CPU per pod, e.g. 8 or 500m; the request and the limit, from which Ray's num-cpus follows. Default: 4 per GPU, 2 for a pod without GPUs.")] = None
    memory: Annotated[Optional[Quantity], Field(default=None, description="Memory per pod, e.g. 64Gi; the request and the limit (half of it is /dev/shm's limit). Default: 32Gi per GPU, 8Gi for a pod without GPUs.")] = None
    gpu_resource_name: Annotated[str, Field(default="nvidia.com/gpu", description="Extended resource name for GPUs.")] = "nvidia.com/gpu"
    node_selector: Annotated[dict[str, str], Field(default_factory=dict, description="Node labels the pods must match.")]
    tolerations: Annotated[
        list[dict[str, Any]], Field(default_factory=list, description="Pod tolerations.", json_schema_extra={FREE_FORM: True}),
    ]
    affinity: Annotated[Optional[dict[str, Any]], Field(default=None, description="Pod affinity.", json_schema_extra={FREE_FORM: True})] = None
    labels: Annotated[dict[str, str], Field(default_factory=dict, description="Extra pod labels.")]
    annotations: Annotated[dict[str, str], Field(default_factory=dict, description="Extra pod annotations.")]

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: Any, info: Any) -> Optional[str]:
        return _check_quantity(value, info.field_name)


class EnvVar(SpecModel):
    name: Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name.")]
    value: Annotated[str, Field(default="", description="Value.")] = ""


class ExtraVolume(SpecModel):
    """A volume mounted into every pod (models and data on a PVC, for example)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Volume name.")]
    mount_path: Annotated[str, Field(pattern=r"^/", description="Where it is mounted.")]
    read_only: Annotated[bool, Field(default=True, description="Mount read-only.")] = True
    source: Annotated[dict[str, Any], Field(description="A Kubernetes volume source, e.g. {persistentVolumeClaim: {claimName: models}}.",
                                            json_schema_extra={FREE_FORM: True})]

    @field_validator("source")
    @classmethod
    def _source(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_volume_source(value)
        return value


class ClusterSpec(SpecModel):
    """The Ray cluster the RayJob creates: image, head, rollout and trainer groups."""

    image: Annotated[Optional[str], Field(default=None, description="Worker image (default: the operator's configured worker image).")] = None
    image_pull_policy: Annotated[Optional[Literal["Always", "IfNotPresent", "Never"]], Field(default=None, description="Image pull policy.")] = None
    image_pull_secrets: Annotated[list[str], Field(default_factory=list, description="Names of image pull Secrets.")]
    placement: Annotated[
        Literal["auto", "colocated", "distributed"],
        Field(default="auto", description="colocated: rollout engine and trainer share a process and GPU (hybrid engine); auto picks it when everything fits one node."),
    ] = "auto"
    head: Annotated[GroupSpec, Field(default_factory=lambda: GroupSpec(replicas=1), description="The Ray head pod (runs the driver).")]
    rollout: Annotated[GroupSpec, Field(default_factory=GroupSpec, description="Rollout (vLLM) worker pods.")]
    trainer: Annotated[GroupSpec, Field(default_factory=GroupSpec, description="Trainer (DeepSpeed) worker pods.")]
    env: Annotated[list[EnvVar], Field(default_factory=list, description="Extra environment for every pod.")]
    volumes: Annotated[list[ExtraVolume], Field(default_factory=list, description="Extra volumes for every pod.")]
    priority_class_name: Annotated[Optional[str], Field(default=None, description="Pod priority class.")] = None
    ray_version: Annotated[str, Field(default="2.60.0", description="Ray version in the image.")] = "2.60.0"

    @field_validator("volumes")
    @classmethod
    def _volumes_do_not_collide(cls, volumes: list["ExtraVolume"]) -> list["ExtraVolume"]:
        names = [v.name for v in volumes]
        for i, volume in enumerate(volumes):
            if volume.name in RESERVED_VOLUMES:
                raise ValueError(f"[{i}].name: {volume.name!r} is used by the operator; pick another name")
            if volume.name in names[:i]:
                raise ValueError(f"[{i}].name: {volume.name!r} is given twice")
            if volume.mount_path.rstrip("/") in RESERVED_MOUNTS:
                raise ValueError(f"[{i}].mountPath: {volume.mount_path} is used by the operator; mount elsewhere")
        return volumes

    @field_validator("env")
    @classmethod
    def _env_not_kuberays(cls, env: list["EnvVar"]) -> list["EnvVar"]:
        for i, var in enumerate(env):
            if var.name in KUBERAY_ENV:
                raise ValueError(f"[{i}].name: {var.name} is set by KubeRay on every Ray pod (the driver joins the "
                                 "cluster through it); remove it")
            if var.name in OPERATOR_ENV:
                raise ValueError(f"[{i}].name: {var.name} is set by the operator; remove it")
        return env

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _DNS_LABEL.match(name):
                raise ValueError(f"imagePullSecrets entries are Secret names (got {name!r})")
        return value


# --------------------------------------------------------------------------- the job


IMMUTABLE_FIELDS = ("model", "data", "reward", "agent", "algorithm", "rollout", "training", "checkpoint", "logging", "cluster")
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
        if not _DNS_LABEL.match(value) or len(value) > 45 or not value[0].isalpha():
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


# --------------------------------------------------------------------------- status


class Phase(str, Enum):
    Pending = "Pending"
    Provisioning = "Provisioning"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Suspended = "Suspended"
    Retrying = "Retrying"


TERMINAL_PHASES = (Phase.Succeeded.value, Phase.Failed.value)


_DATE_TIME = {"format": "date-time"}
_INT64 = {"format": "int64"}


class Condition(SpecModel):
    """A condition as the Kubernetes API conventions define it."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    type: str = Field(description="Validated, Running, Suspended, Succeeded, Failed or Stalled.")
    status: Literal["True", "False", "Unknown"]
    reason: Optional[str] = Field(default=None, description="One CamelCase word a program can match on.")
    message: Optional[str] = Field(default=None, description="What happened, for people.")
    last_transition_time: Optional[str] = Field(default=None, json_schema_extra=_DATE_TIME,
                                                description="When status last changed.")
    observed_generation: Optional[int] = Field(default=None, json_schema_extra=_INT64,
                                               description="The spec generation this condition was set for.")


class Progress(SpecModel):
    """Training progress, as last read from the worker's progress endpoint (rlhf_operator.progress)."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    step: Optional[int] = Field(default=None, description="Training steps done.")
    total_steps: Optional[int] = None
    episode: Optional[int] = None
    reward_mean: Optional[float] = Field(default=None, description="Mean reward of the last step's samples.")
    score_mean: Optional[float] = Field(default=None, description="Mean score (as the reward function reported it).")
    kl: Optional[float] = Field(default=None, description="Mean KL to the reference policy in the last step.")
    samples_per_second: Optional[float] = None
    last_weight_sync: Optional[str] = Field(default=None, description="When the rollout engines last got new weights.")
    heartbeat: Optional[str] = Field(default=None, description="When the training loop last reported; a stale one "
                                                                "sets the Stalled condition.")
    updated: Optional[str] = None


# The CRD's status schema is generated from this model (crd.status_schema).
class RLHFJobStatus(SpecModel):
    """Observed state, written by the operator only."""

    # kopf keeps its own bookkeeping under status.kopf; it must survive the API server's pruning.
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True,
                              json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    phase: Optional[Phase] = Field(default=None, description="Where the job stands.")
    reason: Optional[str] = Field(default=None, description="Why it is in this phase, as one CamelCase word.")
    message: Optional[str] = None
    conditions: Optional[list[Condition]] = Field(default=None, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    ray_job_name: Optional[str] = Field(default=None, description="The RayJob running this job.")
    ray_cluster_name: Optional[str] = None
    dashboard_url: Annotated[Optional[str], Field(default=None, alias="dashboardURL")] = None
    code_hash: Optional[str] = Field(default=None, description="Hash of the snapshotted reward/agent code.")
    progress: Optional[Progress] = None
    last_checkpoint: Optional[str] = Field(default=None, description="Path of the newest checkpoint.")
    attempts: Optional[int] = Field(default=None, description="Attempts made so far: the first run plus KubeRay's retries.")
    start_time: Optional[str] = Field(default=None, json_schema_extra=_DATE_TIME)
    completion_time: Optional[str] = Field(default=None, json_schema_extra=_DATE_TIME)
    observed_generation: Optional[int] = Field(default=None, json_schema_extra=_INT64,
                                               description="The spec generation the operator last acted on.")


# --------------------------------------------------------------------------- code checks


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _parse(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{what} does not parse: line {exc.lineno}: {exc.msg}") from None


def check_reward_source(source: str, what: str = "inline reward code") -> None:
    """The file must define ``reward_func(queries, prompts, labels)``."""
    tree = _parse(source, what)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "reward_func":
            args = node.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            if len(positional) >= 3 or args.vararg is not None:
                return
            raise ValueError(
                f"{what}: reward_func must take (queries, prompts, labels); it takes ({', '.join(positional)})"
            )
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "reward_func" for t in node.targets):
            return  # reward_func = make_reward(...) — checked when loaded
    raise ValueError(f"{what} must define reward_func(queries, prompts, labels)")


def check_agent_source(source: str, what: str = "inline agent code") -> None:
    """The file must define an AgentExecutor or AgentInstance class (OpenRLHF's agent API)."""
    tree = _parse(source, what)
    names = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    if not names & {"AgentExecutor", "AgentInstance"}:
        raise ValueError(f"{what} must define class AgentExecutor or AgentInstance (OpenRLHF's agent API)")


# --------------------------------------------------------------------------- helpers


def immutable_changes(old: RLHFJobSpec, new: RLHFJobSpec) -> list[str]:
    """Spec fields that changed but may not change on an existing job."""
    old_d, new_d = old.dump(), new.dump()
    return [f"spec.{f}" for f in IMMUTABLE_FIELDS if old_d.get(f) != new_d.get(f)]
