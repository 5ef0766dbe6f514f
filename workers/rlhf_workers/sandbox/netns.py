"""No network, unprivileged: a new user namespace with a new network namespace (only a loopback, down).

``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` needs no privilege where the kernel allows unprivileged user
namespaces (``kernel.unprivileged_userns_clone``, ``user.max_user_namespaces``) and the container's
seccomp profile lets ``unshare`` through. The Kubernetes ``RuntimeDefault`` seccomp profile of
containerd and CRI-O refuses it to a container without ``CAP_SYS_ADMIN``: there :func:`isolate`
raises and the caller falls back (Landlock's TCP rules) and says so.

The process keeps its own uid and gid inside the namespace (mapped one to one), so files it writes
belong to the same user as outside. It must be single-threaded when it calls :func:`isolate`.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["isolate", "NamespaceError"]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The kernel (or the container's seccomp profile) refused a new user/network namespace."""


def isolate() -> None:
    """Move this process into a fresh user + network namespace; raises :class:`NamespaceError` if refused."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET)) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(err)}")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        # the namespace exists (no network either way); only the id mapping failed: ids show as nobody
        raise NamespaceError(exc.errno or 0, f"user namespace id mapping: {exc}") from exc


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
