"""Names shared by the operator, the workers and the tests: the API's group and kind, labels and
annotations on what the operator creates, environment variables, and what is reserved in pods."""

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ["rlhf"]

# Labels and annotations on the objects the operator creates.
MANAGER = "rlhf-operator"  # app.kubernetes.io/managed-by and part-of, and the Event source
MANAGED_BY = {"app.kubernetes.io/managed-by": MANAGER}
JOB_LABEL = "rlhf.dev/job-name"
CODE_HASH_ANNOTATION = "rlhf.dev/code-hash"
# On an RLHFJob: "true" makes the driver (or `rlhf run`) write a tiny random model at model.path when
# nothing is there yet: the quickstart and the smoke job run without downloading a model.
TINY_MODEL_ANNOTATION = "rlhf.dev/create-tiny-model"
KUEUE_LABELS = ("kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class")
KUEUE_QUEUE_LABEL = KUEUE_LABELS[0]

# Environment the operator gives every Ray pod (secrets come straight from their Secret).
ENV_JOB_NAME = "RLHF_JOB_NAME"
ENV_CONFIG = "RLHF_CONFIG"
ENV_WANDB_KEY = "WANDB_API_KEY"
ENV_REWARD_TOKEN = "RLHF_REWARD_TOKEN"

# What KubeRay 1.7 sets on the Ray container (common/pod.go setContainerEnvVars): a user value
# either duplicates the entry or, for RAY_ADDRESS and RAY_PORT, replaces KubeRay's and points
# the driver away from its cluster.
KUBERAY_ENV = frozenset({
    "RAY_ADDRESS", "RAY_PORT", "RAY_IP", "FQ_RAY_IP", "RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE",
    "RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME", "KUBERAY_GEN_RAY_START_CMD", "RAY_USAGE_STATS_EXTRA_TAGS",
})
OPERATOR_ENV = frozenset({ENV_JOB_NAME, ENV_CONFIG})
# Every container's root file system is read-only; Ray, vLLM, Triton, Hugging Face and W&B write
# to two emptyDirs instead: /tmp (Ray's session directory) and the image user's cache directory.
SCRATCH_DIRS = {"rlhf-tmp": "/tmp", "rlhf-cache": "/home/ray/.cache"}
RESERVED_VOLUMES = {"rlhf-config", "rlhf-code", "dshm", "checkpoints", *SCRATCH_DIRS}
RESERVED_MOUNTS = {"/etc/rlhf/config", "/etc/rlhf/code", "/dev/shm"}
# Mounted by the operator too, but a user volume may sit inside them (a PVC for the HF cache at
# /home/ray/.cache/huggingface, a checkpoint directory under /tmp): only the paths themselves are taken.
RESERVED_EXACT_MOUNTS = set(SCRATCH_DIRS.values())
# Where a run leaves its trained model, in the output directory (checkpoint.path in a cluster).
FINAL_MODEL_DIR = "final_model"
