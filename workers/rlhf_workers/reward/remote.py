"""The remote executor: an HTTP reward server speaking OpenRLHF's remote RM contract
(``remote_rm_utils``), with retries, backoff and batching.

Requests go through one ``httpx.Client`` per executor, so a reward worker keeps its
keep-alive connection to the server across batches and steps instead of opening one per
request; the retry policy (which answers are retried, backoff, Retry-After) is this module's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Optional

import httpx
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

    Redirects are not followed (a POST body does not survive most of them): a 3xx answer is
    reported with its Location. ``close()`` ends the kept-alive connections.
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
        self._client: Optional[httpx.Client] = None
        self._client_lock = threading.Lock()

    def _http(self) -> httpx.Client:
        """The shared client, made on first use (an executor built elsewhere and shipped to a
        Ray actor opens its connections where it runs)."""
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, follow_redirects=False, headers=self._headers())
            return self._client

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"], state["_client_lock"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

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
        last, last_status, last_body = "", None, None
        for attempt in range(attempts):
            retry_after = None
            try:
                response = self._http().post(self.url, content=data)
            except httpx.TimeoutException:
                last, last_status, last_body = f"timed out after {self.timeout_s:g}s", None, None
            except httpx.TransportError as exc:
                last, last_status, last_body = f"connection failed: {exc or type(exc).__name__}", None, None
            else:
                status, body = response.status_code, response.text
                if 200 <= status < 300:
                    return self._json(status, body, attempt)
                last_status, last_body = status, body
                last = f"HTTP {status} {response.reason_phrase}: {_snip(body)}"
                if status not in self.RETRY_STATUSES:
                    raise self._refused(last, status, body, attempt, response.headers.get("Location"))
                retry_after = response.headers.get("Retry-After")
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                logger.warning("reward server %s: %s; retry %d/%d in %.2fs", self.url, last, attempt + 1,
                               self.retries, delay)
                self._sleep(delay)
        raise RemoteRewardError(
            f"reward server {self.url} failed after {attempts} attempt(s); last error: {last}",
            url=self.url, status=last_status, body=last_body, attempts=attempts)

    def _json(self, status: int, text: str, attempt: int) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RemoteRewardError(
                f"reward server {self.url} answered HTTP {status} with a body that is not JSON "
                f"({exc.msg} at position {exc.pos}): {_snip(text)}",
                url=self.url, status=status, body=text, attempts=attempt + 1) from None

    def _refused(self, last: str, status: int, body: str, attempt: int, location: Optional[str]) -> RemoteRewardError:
        """An answer that retrying will not change: 4xx other than 429, or a redirect."""
        hint = " (check the token)" if status in (401, 403) else ""
        if 300 <= status < 400:
            hint = f" (redirects are not followed: set the url to {location or 'the final address'})"
        return RemoteRewardError(f"reward server {self.url} answered {last}{hint}",
                                 url=self.url, status=status, body=body, attempts=attempt + 1)


def _snip(text: str, limit: int = _BODY_PREVIEW) -> str:
    text = text.strip().replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "...")

