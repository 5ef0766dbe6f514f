"""
Fault injection: rules that make chosen requests fail the way a real API server or network does.

A rule matches an HTTP verb and a path (a regular expression searched in the request's path,
e.g. ``r'/configmaps$'`` or ``r'/rlhfjobs/[^/]+/status$'``), and fires with a probability, at
most ``count`` times (None: no limit). What it does:

- ``status``: answer ``code`` with a proper ``Status`` body without touching the store (500
  InternalError, 429 TooManyRequests with ``Retry-After``, 409 Conflict, 503, ...);
- ``reset-before``: drop the connection before the request is applied (nothing changes);
- ``reset-after``: apply the request, then drop the connection instead of answering (the client
  sees an error, but the write happened: a create must then be adopted, not repeated);
- ``delay``: wait ``delay`` seconds, then serve the request normally (a slow answer).

Draws come from one seeded RNG under a lock, so a run with the same seed and the same order of
requests injects the same faults. ``injected`` counts what fired, by kind (``'500'``, ``'429'``,
``'409'``, ``'reset-before'``, ``'reset-after'``, ``'delay'``).
"""
from __future__ import annotations

import random
import re
import threading
from collections import Counter
from typing import Any

import attrs

from .errors import ApiError

ACTIONS = ('status', 'reset-before', 'reset-after', 'delay')
REASONS = {400: 'BadRequest', 404: 'NotFound', 409: 'Conflict', 429: 'TooManyRequests',
           500: 'InternalError', 503: 'ServiceUnavailable', 504: 'Timeout'}


@attrs.define(kw_only=True, eq=False)
class FaultRule:
    """One rule; ``fired`` counts its injections."""
    action: str
    method: str = '*'  # an HTTP verb, or '*' for any
    path: re.Pattern[str] = attrs.field(converter=lambda p: re.compile(p) if isinstance(p, str) else p)
    code: int = 500
    probability: float = 1.0
    count: int | None = None
    delay: float = 0.0
    retry_after: int = 1
    fired: int = 0

    def __attrs_post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f'unknown fault action {self.action!r}; one of {ACTIONS}')

    @property
    def kind(self) -> str:
        return str(self.code) if self.action == 'status' else self.action

    def matches(self, method: str, path: str) -> bool:
        return ((self.method == '*' or self.method.upper() == method.upper()) and
                (self.count is None or self.fired < self.count) and self.path.search(path) is not None)

    def status(self, path: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The Status body and extra headers of a ``status`` fault."""
        reason = REASONS.get(self.code, 'InternalError')
        if self.code == 409:
            message = f'Operation cannot be fulfilled on {path}: the object has been modified; ' \
                      'please apply your changes to the latest version and try again (injected)'
        elif self.code == 429:
            message = 'the server has received too many requests and has asked us to try again later (injected)'
        else:
            message = f'an error on the server ("injected fault {self.code}") has prevented the request from succeeding'
        details = {'retryAfterSeconds': self.retry_after} if self.code in (429, 503, 504) else None
        headers = {'Retry-After': str(self.retry_after)} if self.code in (429, 503) else {}
        return ApiError(self.code, reason, message, details).status(), headers


class FaultInjector:
    """The rules in force; :meth:`pick` is called once per request, from the server's thread."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.rules: list[FaultRule] = []
        self.injected: Counter[str] = Counter()
        self.enabled = True

    def add(self, action: str, method: str = '*', path: str = '', **kwargs: Any) -> FaultRule:
        """Add a rule (see :class:`FaultRule` for the fields); rules are tried in order."""
        rule = FaultRule(action=action, method=method, path=path, **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def seed(self, seed: int) -> None:
        with self._lock:
            self._rng.seed(seed)

    def clear(self) -> None:
        """Remove all rules (the counts stay)."""
        with self._lock:
            self.rules.clear()

    def total(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any: the first that matches and wins its draw."""
        if not self.rules or not self.enabled:
            return None
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path) and (rule.probability >= 1 or self._rng.random() < rule.probability):
                    rule.fired += 1
                    self.injected[rule.kind] += 1
                    return rule
        return None
