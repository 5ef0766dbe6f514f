"""Small things every layer of the emulator shares: the object type, the wire encoding, the clock."""
from __future__ import annotations

import datetime
import json
from typing import Any

Obj = dict[str, Any]


def now() -> str:
    """The current time as the apiserver writes timestamps (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def dumps(obj: Any) -> bytes:
    """Compact JSON, as sent on the wire (responses and watch-stream lines)."""
    return json.dumps(obj, separators=(',', ':')).encode()
