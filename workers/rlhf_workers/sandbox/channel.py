"""Length-prefixed frames over a pair of pipes, between the pool and a sandboxed process.

Down (parent to sandbox) frames are pickles: the parent is trusted. Up (sandbox to parent) frames
are JSON only, never pickles - unpickling bytes the sandboxed code could forge would run its code in
the parent. Values that are not JSON (tensors, arrays) travel as ``{"__array__": ...}`` records
(:mod:`.values`). A frame larger than :data:`MAX_FRAME` or one that does not decode ends that
worker, so sandboxed code writing garbage on its pipe cannot make the parent allocate without bound.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from typing import Any, Optional

__all__ = ["encode", "send", "recv_blocking", "FrameReader", "FrameError", "MAX_FRAME"]

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct("!Q")


class FrameError(Exception):
    """The other side sent something that is not a frame of this protocol."""


def encode(obj: Any, *, as_json: bool = False) -> bytes:
    """One frame's bytes: JSON (sandbox to parent) or pickle (parent to sandbox)."""
    data = json.dumps(obj).encode() if as_json else pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def send(fd: int, obj: Any, *, as_json: bool = False) -> None:
    """Write one frame (blocking)."""
    view = memoryview(encode(obj, as_json=as_json))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def recv_blocking(fd: int) -> Optional[Any]:
    """One frame from the parent on ``fd`` (blocking); None at end of file."""
    reader = FrameReader(trusted=True)
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        frames = reader.feed(chunk)
        if frames:
            return frames[0]


class FrameReader:
    """Accumulates bytes read without blocking; :meth:`feed` returns the frames completed so far
    (JSON frames unless ``trusted``, when they are the parent's pickles)."""

    def __init__(self, trusted: bool = False):
        self._buffer = bytearray()
        self._trusted = trusted

    def feed(self, chunk: bytes) -> list[Any]:
        self._buffer += chunk
        frames = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} bytes (more than {MAX_FRAME})")
            if len(self._buffer) < _HEADER.size + size:
                break
            payload = bytes(self._buffer[_HEADER.size:_HEADER.size + size])
            del self._buffer[:_HEADER.size + size]
            try:
                frames.append(pickle.loads(payload) if self._trusted else json.loads(payload))
            except Exception as exc:  # noqa: BLE001 - anything the child sent that does not load
                raise FrameError(f"an unreadable frame ({type(exc).__name__}: {exc})") from exc
        return frames
