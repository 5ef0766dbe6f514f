"""Landlock (Linux >= 5.13), unprivileged: after :func:`restrict`, this process and everything it starts
can read only the listed paths, write only its scratch directory, and (ABI >= 4) neither bind nor
connect TCP sockets; with ABI >= 6 it can neither signal processes outside it nor reach abstract UNIX
sockets outside it.

The three system calls are made through ``ctypes`` (Python has no binding); their numbers are the
same on every architecture (444-446). The layouts follow the kernel's ``include/uapi/linux/landlock.h``.
A kernel without Landlock answers ``ENOSYS`` or ``EOPNOTSUPP`` to the version query: :func:`abi_version`
returns 0 and the caller says so.
"""

from __future__ import annotations

import ctypes
import os
from typing import Iterable

__all__ = ["abi_version", "restrict", "LandlockError"]

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# filesystem rights, by the ABI version that introduced them
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_READ = _EXECUTE | _READ_FILE | _READ_DIR


class LandlockError(OSError):
    """Landlock is unavailable or refused the ruleset."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"landlock syscall {number}: {os.strerror(err)}")
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is not available."""
    try:
        return _syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (LandlockError, AttributeError):
        return 0


def _fs_rights(abi: int) -> int:
    rights = _FS_V1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def restrict(read_paths: Iterable[str], write_paths: Iterable[str], *, list_paths: Iterable[str] = (),
             block_tcp: bool = True) -> dict:
    """Confine this process (and its future children) to read ``read_paths`` and read/write ``write_paths``;
    ``list_paths`` are directories whose entries (names only, no file in them) may be listed.

    Paths that do not exist are skipped. Returns what was enforced: ``{"abi": n, "tcp_blocked": bool,
    "scoped": bool}``. Raises :class:`LandlockError` when Landlock is unavailable.
    """
    abi = abi_version()
    if abi < 1:
        raise LandlockError(0, "Landlock is not available in this kernel (or is disabled by the LSM list)")
    fs = _fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=fs)
    size = 8
    tcp = block_tcp and abi >= 4
    if tcp:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP  # no rule allows any port
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
        size = 24
    ruleset = _syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for paths, rights in ((read_paths, _READ), (write_paths, fs), (list_paths, _READ_DIR)):
            for path in paths:
                _allow(ruleset, path, rights)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise LandlockError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        _syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return {"abi": abi, "tcp_blocked": tcp, "scoped": abi >= 6}


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):  # a file rule may carry only file rights
            rights &= _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
        rule = _PathBeneath(allowed_access=rights, parent_fd=fd)
        _syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                 ctypes.c_uint32(0))
    finally:
        os.close(fd)
