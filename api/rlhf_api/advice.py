"""What a valid job may still get wrong: warnings, not errors.

``rlhf validate`` prints them (``FILE: warning: FIELD: message``) and the operator posts each as a
Warning Event on the job, once. They never refuse a job: ``rlhf run`` and tests use the same files.

* **A checkpoint path that is not on a persistent volume.** ``checkpoint.volume`` unset (the
  operator then mounts an emptyDir), an ``emptyDir`` or a generic ``ephemeral`` volume: each is
  deleted with its pod, so on a cluster the checkpoints and the final model go when KubeRay
  shuts the Ray cluster down at the end of the job. ``rlhf run`` writes to ``--output`` instead
  and is not affected.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from .names import FINAL_MODEL_DIR

# Volume sources whose contents live and die with the pod (core/v1 EmptyDirVolumeSource,
# EphemeralVolumeSource: "the PVC will be deleted together with the pod").
POD_LIFETIME_SOURCES = ("emptyDir", "ephemeral")
EPHEMERAL_CHECKPOINTS = "EphemeralCheckpoints"  # the Event reason


class Warning_(NamedTuple):
    """One warning: the field it is about, what goes wrong, and the Event reason the operator posts."""

    field: str
    message: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def checkpoint_persistence(spec: Any) -> Optional[Warning_]:
    """A warning when ``checkpoint.path`` is on storage that goes away with the Ray pods."""
    volume = spec.checkpoint.volume
    kind = next(iter(volume)) if volume else None
    if kind is not None and kind not in POD_LIFETIME_SOURCES:
        return None
    where = "an emptyDir (checkpoint.volume is not set)" if kind is None else f"a{'n' if kind[0] in 'ae' else ''} {kind} volume"
    return Warning_(
        "spec.checkpoint.volume",
        f"checkpoint.path {spec.checkpoint.path} is {where}, deleted with its pod: on a cluster the checkpoints and"
        " the trained model are lost when the Ray cluster shuts down at the end of the job. Keep them on a"
        " PersistentVolumeClaim: checkpoint.volume: {persistentVolumeClaim: {claimName: NAME}} (rlhf run is not"
        " affected: it writes to --output)",
        EPHEMERAL_CHECKPOINTS)


def final_model_path(spec: dict[str, Any]) -> Optional[str]:
    """Where a job that succeeded on a cluster left its model (``spec`` as stored), if it outlives the
    Ray cluster: on a persistent checkpoint volume. None when it was deleted with the pods."""
    checkpoint = spec.get("checkpoint") or {}
    volume = checkpoint.get("volume") or {}
    if not volume or next(iter(volume)) in POD_LIFETIME_SOURCES:
        return None
    return f"{str(checkpoint.get('path') or '/checkpoints').rstrip('/')}/{FINAL_MODEL_DIR}"


def job_warnings(spec: Any) -> list[Warning_]:
    """Every warning for an RLHFJobSpec, in spec order."""
    found = [checkpoint_persistence(spec)]
    return [w for w in found if w is not None]
