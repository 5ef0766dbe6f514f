"""Pure rendering of the code-check pod, and the pure reading of its verdict. No I/O.

Before the RayJob, the operator runs the job's reward/agent code once in a short pod:

* the worker image (the job's ``cluster.image`` or the operator's default), the same snapshot
  ConfigMap mounts (worker config, code) and ``cluster.volumes`` (where the data usually is) as
  the Ray pods, the same restricted security context, no service-account token;
* CPU only: one core, and the memory the sandboxed reward or agent may use (``*.sandbox.memoryMB``)
  plus 1 GiB for the check itself (at least 2 GiB); no GPU requested, no node selector or
  tolerations of the GPU groups;
* no Secrets: environment entries that come from Secrets or ConfigMaps are left out;
* ``cluster.rewardRuntimeClassName``, when set, as on the head pod where training runs user code;
* ``python -m rlhf_workers --check-code`` (rlhf_workers.code_check), whose verdict, a small JSON
  object, goes to the container's termination-message file: the kubelet copies it into the pod's
  status (``state.terminated.message``), where ``verdict`` reads it. With
  ``FallbackToLogsOnError`` a check that dies before writing it still leaves the tail of its log there.

The pod is ``<job>-codecheck-<code hash>``, owned by the RLHFJob, so it goes with the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from rlhf_api.cluster import GroupSpec
from rlhf_api.spec import RLHFJob, RLHFJobSpec
from rlhf_api.workerconfig import CONFIG_DIR, CONFIG_FILE

from .render import RenderOptions, Snapshot, _metadata, _pod_template

COMPONENT = "codecheck"
CONTAINER = "codecheck"
RESULT_PATH = "/dev/termination-log"  # the kubelet's default; named so that the contract is visible
CPU, MEMORY = "1", "2Gi"
CHECK_OVERHEAD_MIB = 1024  # the check process itself (Python, torch) beside the sandboxed reward
NO_LIMIT_MEMORY = "8Gi"    # reward.sandbox.memoryMB: 0 (no limit of its own)
# The pod's own bound once it runs (image pull included); the operator bounds the wait before it runs.
ACTIVE_DEADLINE_SECONDS = 900
# Volumes of the Ray pods the check has no use for: /dev/shm for NCCL/vLLM, and the checkpoint
# volume (a ReadWriteOnce claim attached here would only delay the head pod).
_LEFT_OUT = ("dshm", "checkpoints")


def wanted(spec: RLHFJobSpec) -> bool:
    """Whether a job gets the check: it has code of its own (a reward function or an agent) and
    ``spec.preflight`` is not false."""
    has_code = spec.agent is not None or (spec.reward is not None and spec.reward.function is not None)
    return has_code and getattr(spec, "preflight", True)


def memory(spec: RLHFJobSpec) -> str:
    """The pod's memory: room for the sandboxed reward or agent as training gives it
    (``reward.sandbox.memoryMB``, ``agent.sandbox.memoryMB``) and the check process beside it; at least MEMORY."""
    code = spec.reward if spec.reward is not None else spec.agent
    sandbox = getattr(code, "sandbox", None) if code is not None else None
    limit = getattr(sandbox, "memory_mb", None)
    if limit is None:
        return MEMORY
    if limit == 0:
        return NO_LIMIT_MEMORY
    return f"{max(2048, limit + CHECK_OVERHEAD_MIB)}Mi"


def pod_name(job_name: str, digest: Optional[str]) -> str:
    return f"{job_name}-{COMPONENT}-{digest}" if digest else f"{job_name}-{COMPONENT}"


def codecheck_pod(job: RLHFJob, snapshot: Snapshot, digest: Optional[str],
                  options: RenderOptions = RenderOptions()) -> dict[str, Any]:
    """The code-check Pod for ``job``, mounting ``snapshot`` (the ConfigMap render() made)."""
    image = job.spec.cluster.image or options.default_image
    group = GroupSpec(replicas=1, gpus=0, cpu=CPU, memory=memory(job.spec))
    template = _pod_template(job, COMPONENT, group, CONTAINER, image, snapshot)
    spec = template["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in _LEFT_OUT]
    container = spec["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] not in _LEFT_OUT]
    container["env"] = [e for e in container.get("env") or [] if "valueFrom" not in e]  # no Secrets here
    container.pop("envFrom", None)
    container["command"] = ["python", "-m", "rlhf_workers", "--check-code", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}",
                            "--result-file", RESULT_PATH]
    container["terminationMessagePath"] = RESULT_PATH
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    spec.update(restartPolicy="Never", activeDeadlineSeconds=ACTIVE_DEADLINE_SECONDS, terminationGracePeriodSeconds=5,
                automountServiceAccountToken=False)
    spec.pop("serviceAccountName", None)
    runtime = getattr(job.spec.cluster, "reward_runtime_class_name", None)
    if runtime:  # user code runs here as on the head pod: under the same RuntimeClass (gVisor, ...)
        spec["runtimeClassName"] = runtime
    meta = _metadata(job, pod_name(job.metadata.name, digest), COMPONENT)
    meta["labels"] = {**template["metadata"]["labels"], **meta["labels"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class CheckVerdict:
    state: str        # "running", "passed" or "failed"
    message: str


def _outcome(text: str) -> tuple[Optional[bool], str]:
    """(ok, message) from the check's JSON; (None, the text) when it is a log tail instead."""
    try:
        data = json.loads(text)
    except ValueError:
        return None, text.strip()
    if isinstance(data, dict) and isinstance(data.get("ok"), bool):
        return data["ok"], str(data.get("message") or "")
    return None, text.strip()


def verdict(pod: dict[str, Any], now: datetime, wait_seconds: float) -> CheckVerdict:
    """What the pod says so far. A pod that has not finished ``wait_seconds`` after it was created
    (unschedulable, its image not pulled, ...) is failed with what it is waiting for."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    states = [c.get("state") or {} for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER]
    terminated = states[0].get("terminated") if states else None
    if phase in ("Succeeded", "Failed"):
        ok, message = _outcome((terminated or {}).get("message") or "")
        if phase == "Succeeded" and ok is not False:
            return CheckVerdict("passed", message or "the code check passed")
        if terminated and terminated.get("reason") == "OOMKilled":
            message = "the code check ran out of memory (OOMKilled) importing or calling the code; lower what it" \
                      " loads, or raise reward.sandbox.memoryMB (the check's pod gets that and 1 GiB more)"
        elif status.get("reason") == "DeadlineExceeded":
            message = f"the code check did not finish within {ACTIVE_DEADLINE_SECONDS} s"
        elif not message:
            code = (terminated or {}).get("exitCode")
            message = f"the code check failed (exit code {code}) without a message" if code is not None else \
                f"the code-check pod failed: {status.get('reason') or ''} {status.get('message') or ''}".strip()
        return CheckVerdict("failed", message)
    waiting = states[0].get("waiting") if states else None
    why = f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip(": ") if waiting else \
        "; ".join(c.get("message") or c.get("reason") or "" for c in status.get("conditions") or []
                  if c.get("status") == "False" and (c.get("message") or c.get("reason")))
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    age = (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds() if created else 0.0
    if age > wait_seconds:
        return CheckVerdict("failed", f"the code-check pod did not finish within {int(wait_seconds)} s"
                                      f" ({phase}{': ' + why if why else ''})")
    return CheckVerdict("running", f"{phase}{': ' + why if why else ''}")
