"""Which Secrets a job's pods get to read, and which credentials a volume may never project.

Pods of an RLHFJob run the user's code, so every Secret the spec names is readable by whoever
wrote the spec. The admission webhook therefore asks the API server (a SubjectAccessReview)
whether the requesting user may `get` each Secret listed by :func:`secret_references`, and
``launch`` refuses them where no webhook ran (see docs/operator.md, "Secrets").

Pure functions over the parsed spec (duck-typed, so this module imports no model and the
models may import it).
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

# Projected sources that hand the pod a credential of its service account: a token despite
# automountServiceAccountToken: false, or a certificate the cluster issues for that identity.
CREDENTIAL_PROJECTIONS = ("serviceAccountToken", "podCertificate")


class SecretReference(NamedTuple):
    """A Secret the spec names, and where (the field path as `rlhf validate` prints it)."""

    field: str
    name: str


def credential_projection_problems(source: dict[str, Any]) -> list[str]:
    """Why a volume source may not be used: projected service-account credentials (paths relative)."""
    projected = source.get("projected")
    if not isinstance(projected, dict):
        return []
    problems = []
    for i, item in enumerate(projected.get("sources") or []):
        for kind in CREDENTIAL_PROJECTIONS:
            if isinstance(item, dict) and kind in item:
                problems.append(f"projected.sources[{i}].{kind}: pods of an RLHFJob run user code and get no"
                                " service-account credentials; remove it (mount a Secret the job's creator may read"
                                " instead)")
    return problems


def _volume_secrets(source: dict[str, Any], at: str) -> Iterator[SecretReference]:
    """The Secrets one Kubernetes volume source names."""
    secret = source.get("secret")
    if isinstance(secret, dict) and secret.get("secretName"):
        yield SecretReference(f"{at}.secret.secretName", secret["secretName"])
    projected = source.get("projected")
    if isinstance(projected, dict):
        for i, item in enumerate(projected.get("sources") or []):
            inner = item.get("secret") if isinstance(item, dict) else None
            if isinstance(inner, dict) and inner.get("name"):
                yield SecretReference(f"{at}.projected.sources[{i}].secret.name", inner["name"])
    csi = source.get("csi")
    if isinstance(csi, dict) and isinstance(csi.get("nodePublishSecretRef"), dict) \
            and csi["nodePublishSecretRef"].get("name"):
        # Handed to the CSI driver, which may use it to fetch further secrets into the pod.
        yield SecretReference(f"{at}.csi.nodePublishSecretRef.name", csi["nodePublishSecretRef"]["name"])


def secret_references(spec: Any) -> list[SecretReference]:
    """Every Secret an RLHFJobSpec names, in spec order, each with its field path.

    Covers the W&B key, the remote reward's token, secret, projected-secret and CSI-credential
    volumes (cluster.volumes and checkpoint.volume), Secret-backed environment (cluster.env[].valueFrom
    .secretKeyRef and cluster.envFrom[].secretRef), and imagePullSecrets: pull credentials never
    reach the container, but they let the kubelet fetch images the creator might not be able to.
    """
    refs: list[SecretReference] = []
    wandb = spec.logging.wandb
    if wandb is not None and wandb.api_key_secret_ref is not None:
        refs.append(SecretReference("spec.logging.wandb.apiKeySecretRef.name", wandb.api_key_secret_ref.name))
    remote = spec.reward.remote if spec.reward is not None else None
    if remote is not None and remote.token_secret_ref is not None:
        refs.append(SecretReference("spec.reward.remote.tokenSecretRef.name", remote.token_secret_ref.name))
    if spec.checkpoint.volume:
        refs.extend(_volume_secrets(spec.checkpoint.volume, "spec.checkpoint.volume"))
    for i, volume in enumerate(spec.cluster.volumes):
        refs.extend(_volume_secrets(volume.source, f"spec.cluster.volumes[{i}].source"))
    for i, var in enumerate(spec.cluster.env):
        if var.value_from is not None and var.value_from.secret_key_ref is not None:
            refs.append(SecretReference(f"spec.cluster.env[{i}].valueFrom.secretKeyRef.name",
                                        var.value_from.secret_key_ref.name))
    for i, source in enumerate(spec.cluster.env_from):
        if source.secret_ref is not None:
            refs.append(SecretReference(f"spec.cluster.envFrom[{i}].secretRef.name", source.secret_ref.name))
    for i, name in enumerate(spec.cluster.image_pull_secrets):
        refs.append(SecretReference(f"spec.cluster.imagePullSecrets[{i}]", name))
    return refs


class TokenReference(NamedTuple):
    """A service account whose API token the spec asks to mount into the pods, and where."""

    field: str
    service_account: str


def token_references(spec: Any) -> list[TokenReference]:
    """The service-account token the pods get (cluster.automountServiceAccountToken): a credential
    like a Secret, so whoever creates the job must be allowed to request that token themselves
    (`create` on serviceaccounts/token), which admission reviews as it reviews Secrets."""
    cluster = spec.cluster
    if not cluster.automount_service_account_token:
        return []
    return [TokenReference("spec.cluster.automountServiceAccountToken", cluster.service_account_name or "default")]


def describe(refs: list[SecretReference]) -> str:
    """The references as one line: `Secret "wandb" (spec.logging...), Secret "x" (...)`."""
    return ", ".join(f'Secret "{ref.name}" ({ref.field})' for ref in refs)
