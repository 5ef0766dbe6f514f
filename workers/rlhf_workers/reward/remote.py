"""The remote executor: an HTTP reward server speaking OpenRLHF's remote RM contract
(``remote_rm_utils``), with retries, backoff and batching."""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

import torch

from .contract import check_inputs, validate_reward_output
from .errors import RemoteRewardError, RewardContractError
from .result import RewardExecutor, RewardResult

__all__ = ["RemoteReward"]

logger = logging.getLogger(__name__)

_BODY_PREVIEW = 300


class RemoteReward(RewardExecutor):
    """An HTTP reward server speaking OpenRLHF's remote RM contract.

    Request: ``POST url`` with JSON ``{"query": [...], "prompts": [...], "labels": [...]}``.
    Response: a JSON object ``{"rewards": [...], "scores"?: [...], "extra_logs"?: {...}}``,
    validated like a local ``reward_func`` result (a bare JSON list is rejected).

    Args:
        url: the endpoint.
        token: sent as ``Authorization: Bearer <token>`` when given.
        timeout_s: per-request timeout.
        retries: extra attempts after the first on connection errors, timeouts, HTTP 5xx
            and 429 (other 4xx, bad JSON and contract violations are not retried).
        batch_size: split a batch into requests of at most this many samples.
        backoff_s, max_backoff_s: exponential backoff ``backoff_s * 2**attempt`` capped at
            ``max_backoff_s``; a numeric ``Retry-After`` header on 429/503 is honoured (capped).
    """

    RETRY_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout_s: float = 180.0,
        retries: int = 4,
        batch_size: Optional[int] = None,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward URL must start with http:// or https://, got {url!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.batch_size = batch_size
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep

    def score(self, queries, prompts, labels=None) -> RewardResult:
        labels = check_inputs(queries, prompts, labels)
        n = len(queries)
        step = self.batch_size or max(n, 1)
        parts = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            parts.append(self._score_chunk(list(queries[start:stop]), list(prompts[start:stop]), labels[start:stop],
                                           offset=start))
        if not parts:  # nothing to score: no request
            return RewardResult(rewards=torch.zeros(0), scores=torch.zeros(0))
        return RewardResult.concat(parts)

    def _score_chunk(self, queries: list, prompts: list, labels: list, offset: int) -> RewardResult:
        body = self._post({"query": queries, "prompts": prompts, "labels": labels})
        try:
            return validate_reward_output(body, len(queries), prompts, source=f"reward server {self.url}")
        except RewardContractError as exc:
            if offset and exc.sample_index is not None:
                exc.sample_index += offset
            raise

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        delay = self.backoff_s * (2 ** attempt)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.max_backoff_s)

    def _post(self, payload: dict) -> Any:
        data = json.dumps(payload).encode("utf-8")
        attempts = self.retries + 1
        last = ""
        last_status: Optional[int] = None
        last_body: Optional[str] = None
        for attempt in range(attempts):
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                    status = response.status
            except urllib.error.HTTPError as exc:
                body = _read_body(exc)
                last_status, last_body = exc.code, body
                last = f"HTTP {exc.code} {exc.reason}: {_snip(body)}"
                if exc.code not in self.RETRY_STATUSES:
                    hint = " (check the token)" if exc.code in (401, 403) else ""
                    raise RemoteRewardError(
                        f"reward server {self.url} answered {last}{hint}",
                        url=self.url, status=exc.code, body=body, attempts=attempt + 1) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):  # socket.timeout included
                    last = f"timed out after {self.timeout_s:g}s"
                else:
                    last = f"connection failed: {reason}"
                last_status, last_body = None, None
            else:
                text = raw.decode("utf-8", errors="replace")
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise RemoteRewardError(
                        f"reward server {self.url} answered HTTP {status} with a body that is not JSON "
                        f"({exc.msg} at position {exc.pos}): {_snip(text)}",
                        url=self.url, status=status, body=text, attempts=attempt + 1) from None
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                logger.warning("reward server %s: %s; retry %d/%d in %.2fs", self.url, last, attempt + 1,
                               self.retries, delay)
                self._sleep(delay)
        raise RemoteRewardError(
            f"reward server {self.url} failed after {attempts} attempt(s); last error: {last}",
            url=self.url, status=last_status, body=last_body, attempts=attempts)


def _read_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001
        return ""


def _snip(text: str, limit: int = _BODY_PREVIEW) -> str:
    text = text.strip().replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "...")

