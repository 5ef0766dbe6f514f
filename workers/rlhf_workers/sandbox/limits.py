"""What a sandboxed process may use: resource limits, the environment it sees, where it may write.

Everything here is plain Linux that needs no privilege: ``setrlimit`` (inherited by every process
the sandboxed code starts), an environment rebuilt from an allow-list, a private scratch directory
as the working directory and ``HOME``/``TMPDIR``. The stronger walls (no network, a read-only file
system) live in :mod:`.landlock` and :mod:`.netns` and are applied on top when the kernel allows.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

__all__ = ["Limits", "SERVICE_ACCOUNT_DIRS", "ENV_ALLOWED", "CACHE_VARIABLES", "cache_dirs", "sandbox_env",
           "apply_rlimits", "set_call_cpu_limit"]

#: Where Kubernetes mounts a pod's service-account token; never readable from the sandbox
#: (Landlock's read list leaves them out; see docs/rewards.md for what holds without Landlock).
SERVICE_ACCOUNT_DIRS = ("/var/run/secrets", "/run/secrets")

#: Model caches a reward may load from (read-only: :func:`cache_dirs` joins them to the read list).
CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME", "TORCH_HOME")

#: Variables the sandbox keeps from its parent. Everything else (RLHF_*, RAY_*, WANDB_*, AWS_*, HF_TOKEN,
#: *_TOKEN, KUBERNETES_*, proxies, credentials files) is dropped.
ENV_ALLOWED = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
               "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "PYTHONIOENCODING", *CACHE_VARIABLES)
_ENV_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class Limits:
    """Per-process limits of a sandbox (0 turns one off).

    Attributes:
        cpu_seconds: CPU time of one call (the process gets SIGXCPU past it; children have their own).
        memory_mb: address space of each process (``RLIMIT_AS``).
        max_processes: processes the sandbox's user may have at once (``RLIMIT_NPROC``; counts every
            process of that uid, so it is a fork-bomb stop, not an exact count).
        file_size_mb: largest file the sandbox may write (``RLIMIT_FSIZE``).
        output_kb: stdout/stderr kept per process (the rest is counted and dropped, never written to disk).
        open_files: file descriptors per process (``RLIMIT_NOFILE``).
    """

    cpu_seconds: float = 60.0
    memory_mb: int = 8192
    max_processes: int = 256
    file_size_mb: int = 64
    output_kb: int = 64
    open_files: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)


def sandbox_env(scratch: str, parent: Optional[Mapping[str, str]] = None, extra: Optional[Mapping[str, str]] = None
                ) -> dict[str, str]:
    """The sandbox's environment: the allow-listed variables of ``parent``, ``HOME``/``TMPDIR`` in scratch."""
    parent = os.environ if parent is None else parent
    env = {k: v for k, v in parent.items() if k in ENV_ALLOWED or k.startswith(_ENV_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    # the interpreter's own directory first, so `python` in a reward's subprocess is this Python
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])
    env.update({"HOME": scratch, "TMPDIR": scratch, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def cache_dirs(parent: Optional[Mapping[str, str]] = None) -> list[str]:
    """The model cache directories the environment names (readable from the sandbox, never writable)."""
    parent = os.environ if parent is None else parent
    return [parent[k] for k in CACHE_VARIABLES if parent.get(k)]


def _set(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and value > hard:
        value = hard  # an unprivileged process cannot raise its hard limit
    resource.setrlimit(which, (value, value))


def apply_rlimits(limits: Limits) -> None:
    """Set this process's limits (soft = hard, so the sandboxed code cannot raise them); children inherit them.

    CPU time gets a hard ceiling only; :func:`set_call_cpu_limit` moves the soft limit per call.
    """
    mb = 1024 * 1024
    if limits.memory_mb:
        _set(resource.RLIMIT_AS, int(limits.memory_mb) * mb)
    if limits.max_processes:
        _set(resource.RLIMIT_NPROC, int(limits.max_processes))
    if limits.file_size_mb:
        _set(resource.RLIMIT_FSIZE, int(limits.file_size_mb) * mb)
    if limits.open_files:
        _set(resource.RLIMIT_NOFILE, int(limits.open_files))
    _set(resource.RLIMIT_CORE, 0)


def set_call_cpu_limit(limits: Limits) -> None:
    """Allow this process ``limits.cpu_seconds`` more CPU seconds from now (soft limit; SIGXCPU past it)."""
    if not limits.cpu_seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = int(used + limits.cpu_seconds) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
