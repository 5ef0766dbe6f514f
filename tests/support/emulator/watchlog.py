"""
The per-resource event log that watch-streams read from.

Stock KMock ignores ``?resourceVersion=`` on watches and subscribes only after taking its
snapshot, so events written in between are lost and kopf waits forever for them. Here every
write appends a :class:`WatchEvent` to its resource's :class:`Bucket`; a :class:`Watcher` is a
cursor into that log, so a watch resumes exactly after the version it names, and a write costs
O(watchers) to fan out. The log keeps at least ``retention`` events; a watcher that falls
further behind gets 410 Expired, as from a compacted etcd.
"""
from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Mapping

from .common import Obj, dumps
from .errors import ApiError


class WatchEvent:
    __slots__ = ('rv', 'type', 'obj', 'prev', 'namespace', '_line')

    def __init__(self, rv: int, type: str, obj: Obj, prev: Obj | None) -> None:
        self.rv = rv
        self.type = type
        self.obj = obj
        self.prev = prev
        self.namespace = (obj.get('metadata') or {}).get('namespace')
        self._line: bytes | None = None

    @property
    def line(self) -> bytes:  # encoded once, shared by all watchers
        if self._line is None:
            self._line = dumps({'type': self.type, 'object': self.obj}) + b'\n'
        return self._line


class Watcher:
    """A live watch-stream's cursor into a bucket's event log (lives in the emulator loop)."""

    def __init__(self, bucket: 'Bucket', cursor: int, namespace: str | None,
                 labels: Callable[[Mapping[str, str]], bool] | None,
                 fields: Callable[[Obj], bool] | None) -> None:
        self.bucket = bucket
        self.cursor = cursor  # absolute index of the next event to read
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.wakeup = asyncio.Event()

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get('metadata') or {}
        if self.namespace is not None and meta.get('namespace') != self.namespace:
            return False
        if self.labels is not None and not self.labels(meta.get('labels') or {}):
            return False
        if self.fields is not None and not self.fields(obj):
            return False
        return True

    def render(self, event: WatchEvent) -> bytes | None:
        if self.namespace is not None and event.namespace != self.namespace:
            return None
        if self.labels is None and self.fields is None:
            return event.line
        now, before = self.matches(event.obj), self.matches(event.prev)
        if event.type == 'DELETED':
            return event.line if now else None
        if now and before:
            return event.line
        if now:  # started matching the selector
            return dumps({'type': 'ADDED', 'object': event.obj}) + b'\n'
        if before:  # stopped matching the selector
            return dumps({'type': 'DELETED', 'object': event.obj}) + b'\n'
        return None


class Bucket:
    """All objects of one resource (group+plural), their event log, and their watchers."""

    def __init__(self, retention: int) -> None:
        self.objects: dict[tuple[str | None, str], Obj] = {}
        self.log: list[WatchEvent] = []
        self.log_rvs: list[int] = []
        self.base = 0  # absolute index of log[0]
        self.compacted_rv = 0  # events with rv <= this are no longer available
        self.retention = retention
        self.watchers: set[Watcher] = set()

    @property
    def end(self) -> int:
        return self.base + len(self.log)

    def append(self, event: WatchEvent) -> None:
        self.log.append(event)
        self.log_rvs.append(event.rv)
        if len(self.log) >= 2 * self.retention:  # amortised O(1) compaction
            drop = len(self.log) - self.retention
            self.compacted_rv = self.log_rvs[drop - 1]
            del self.log[:drop]
            del self.log_rvs[:drop]
            self.base += drop

    def position_after(self, rv: int) -> int:
        return self.base + bisect.bisect_right(self.log_rvs, rv)

    def read(self, cursor: int) -> list[WatchEvent]:
        return self.log[cursor - self.base:]

    def watch(
            self,
            namespace: str | None,
            labels: Callable[[Mapping[str, str]], bool] | None,
            fields: Callable[[Obj], bool] | None,
            *,
            resource_version: str | None,
            from_now: bool,
    ) -> tuple[Watcher, list[Obj]]:
        """
        Add a watcher: at the log's end with the matching objects as its initial ones (``from_now``),
        or right after ``resource_version``. Raises 400 for a malformed version, 410 for a compacted one.
        The caller holds the store's lock.
        """
        if from_now:
            watcher = Watcher(self, self.end, namespace, labels, fields)
            initial = [obj for obj in self.objects.values() if watcher.matches(obj)]
            initial.sort(key=lambda o: (o['metadata'].get('namespace') or '', o['metadata']['name']))
        else:
            try:
                rv = int(resource_version)  # type: ignore[arg-type]
            except ValueError:
                raise ApiError.bad_request(f'invalid resource version: {resource_version!r}') from None
            if rv < self.compacted_rv:
                raise ApiError.gone(f'too old resource version: {rv} ({self.compacted_rv})')
            watcher, initial = Watcher(self, self.position_after(rv), namespace, labels, fields), []
        self.watchers.add(watcher)
        return watcher, initial

    def take(self, watcher: Watcher) -> list[WatchEvent] | None:
        """The events since a watcher's cursor, moving it to the end; ``None`` if they were compacted."""
        if watcher.cursor < self.base:
            return None
        events = self.read(watcher.cursor)
        watcher.cursor = self.end
        return events

