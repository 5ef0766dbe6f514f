"""RemoteReward against a real HTTP server on 127.0.0.1 speaking OpenRLHF's remote RM contract."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import pytest

from rlhf_workers.reward import (
    RemoteReward,
    RemoteRewardError,
    RewardContractError,
    RewardExecutor,
)

Q = ["p0 r0", "p1 r1", "p2 r2", "p3 r3", "p4 r4"]
P = ["p0 ", "p1 ", "p2 ", "p3 ", "p4 "]
L = ["a", "b", "c", "d", "e"]


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict/list -> JSON; str -> raw text
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Server:
    url: str
    requests: list = field(default_factory=list)
    script: list = field(default_factory=list)  # Replies consumed in order; then `default`
    default: Optional[Callable[[dict], Reply]] = None
    token: Optional[str] = None
    connections: int = 0  # TCP connections the server accepted


def contract(payload: dict) -> Reply:
    """A correct reward server: reward = number of characters after the prompt."""
    rewards = [float(len(q) - len(p)) for q, p in zip(payload["query"], payload["prompts"])]
    return Reply(body={"rewards": rewards, "scores": [min(r / 10, 1.0) for r in rewards],
                       "extra_logs": {"mean_len": sum(rewards) / max(len(rewards), 1)}})


@pytest.fixture
def server():
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real reward servers (uvicorn, gunicorn) speak
        disable_nagle_algorithm = True  # as they do too: else each kept-alive reply waits for a delayed ACK

        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            payload = json.loads(raw)
            state.requests.append({"path": self.path, "headers": dict(self.headers), "json": payload})
            if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
                reply = Reply(401, {"error": "bad token"})
            elif state.script:
                reply = state.script.pop(0)
            else:
                reply = (state.default or contract)(payload)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            data = body.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class CountingServer(ThreadingHTTPServer):
        def get_request(self):
            accepted = super().get_request()
            state.connections += 1
            return accepted

    httpd = CountingServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/get_reward"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def remote(server, **kw) -> tuple[RemoteReward, list]:
    sleeps: list = []
    kw.setdefault("backoff_s", 0.01)
    return RemoteReward(server.url, sleep=sleeps.append, **kw), sleeps


def test_happy_path_and_payload_shape(server):
    rm, sleeps = remote(server)
    assert isinstance(rm, RewardExecutor)
    res = rm.score(Q[:3], P[:3], L[:3])
    assert res.rewards.tolist() == [2.0, 2.0, 2.0]
    assert res.scores.tolist() == pytest.approx([0.2] * 3) and res.scores_given
    assert res.extra_logs == {"mean_len": 2.0}
    (req,) = server.requests
    assert req["json"] == {"query": Q[:3], "prompts": P[:3], "labels": L[:3]}
    assert req["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in req["headers"]
    assert req["path"] == "/get_reward"
    assert sleeps == []


def test_rewards_only_response_scores_fall_back(server):
    server.default = lambda payload: Reply(body={"rewards": [0.5] * len(payload["query"])})
    res = remote(server)[0].score(Q[:2], P[:2], L[:2])
    assert res.scores.tolist() == [0.5, 0.5] and not res.scores_given


def test_bearer_token(server):
    server.token = "s3cret"
    ok, _ = remote(server, token="s3cret")
    assert ok.score(Q[:1], P[:1], L[:1]).rewards.tolist() == [2.0]
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"
    bad, sleeps = remote(server, token="wrong", retries=3)
    with pytest.raises(RemoteRewardError) as info:
        bad.score(Q[:1], P[:1], L[:1])
    err = info.value
    assert err.status == 401 and err.attempts == 1 and sleeps == []  # 4xx is not retried
    assert server.url in str(err) and "HTTP 401" in str(err) and "bad token" in str(err)
    assert "check the token" in str(err)
    with pytest.raises(RemoteRewardError, match="HTTP 401"):
        remote(server)[0].score(Q[:1], P[:1], L[:1])  # no token at all


def test_retries_on_503_then_success(server):
    server.script = [Reply(503, {"error": "warming up"}), Reply(503, "busy")]
    rm, sleeps = remote(server, retries=3, backoff_s=0.01)
    res = rm.score(Q[:2], P[:2], L[:2])
    assert res.rewards.tolist() == [2.0, 2.0]
    assert len(server.requests) == 3
    assert sleeps == pytest.approx([0.01, 0.02])  # exponential backoff


def test_429_honours_retry_after(server):
    server.script = [Reply(429, {"error": "slow down"}, headers={"Retry-After": "0.5"})]
    rm, sleeps = remote(server, retries=1, backoff_s=0.01, max_backoff_s=2.0)
    assert rm.score(Q[:1], P[:1], L[:1]).rewards.tolist() == [2.0]
    assert sleeps == [0.5]
    server.script = [Reply(429, {}, headers={"Retry-After": "3600"})]
    rm, sleeps = remote(server, retries=1, max_backoff_s=2.0)
    rm.score(Q[:1], P[:1], L[:1])
    assert sleeps == [2.0]  # capped


def test_gives_up_after_last_retry_with_status_and_body(server):
    server.default = lambda payload: Reply(500, "Traceback: KeyError 'query'\n" + "x" * 1000)
    rm, sleeps = remote(server, retries=2)
    with pytest.raises(RemoteRewardError) as info:
        rm.score(Q[:2], P[:2], L[:2])
    err = info.value
    msg = str(err)
    assert len(server.requests) == 3 and err.attempts == 3 and len(sleeps) == 2
    assert server.url in msg and "failed after 3 attempt(s)" in msg
    assert "HTTP 500" in msg and "KeyError 'query'" in msg
    assert len(msg) < 600  # body is a snippet
    assert err.status == 500 and "x" * 1000 in err.body


def test_404_is_not_retried(server):
    server.default = lambda payload: Reply(404, "no such route")
    rm, sleeps = remote(server, retries=5)
    with pytest.raises(RemoteRewardError, match="HTTP 404.*no such route"):
        rm.score(Q[:1], P[:1], L[:1])
    assert len(server.requests) == 1 and sleeps == []


def test_timeout_is_retried_then_reported(server):
    server.default = lambda payload: Reply(body={"rewards": [1.0]}, delay_s=1.0)
    rm, sleeps = remote(server, timeout_s=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(RemoteRewardError) as info:
        rm.score(Q[:1], P[:1], L[:1])
    assert time.monotonic() - started < 1.5
    assert "timed out after 0.2s" in str(info.value) and info.value.attempts == 2
    assert len(sleeps) == 1


def test_timeout_then_success(server):
    server.script = [Reply(body={"rewards": [9.0]}, delay_s=0.6)]
    rm, _ = remote(server, timeout_s=0.3, retries=2)
    assert rm.score(Q[:1], P[:1], L[:1]).rewards.tolist() == [2.0]


def test_connection_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list = []
    rm = RemoteReward(f"http://127.0.0.1:{port}/r", retries=2, backoff_s=0.01, sleep=sleeps.append)
    with pytest.raises(RemoteRewardError) as info:
        rm.score(Q[:1], P[:1], L[:1])
    assert "connection failed" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert info.value.attempts == 3 and len(sleeps) == 2


def test_bad_json_is_reported_not_retried(server):
    server.default = lambda payload: Reply(200, "<html>proxy error</html>")
    rm, sleeps = remote(server, retries=3)
    with pytest.raises(RemoteRewardError) as info:
        rm.score(Q[:1], P[:1], L[:1])
    assert "not JSON" in str(info.value) and "proxy error" in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "body, expected, index",
    [
        ([1.0, 2.0], "returned a list of length 2 instead of a dict", None),
        ({"scores": [1.0, 2.0]}, 'without the required key "rewards"', None),
        ({"rewards": [1.0]}, "`rewards` has length 1 but the batch has 2 queries", None),
        ({"rewards": [1.0, None]}, "`rewards[1]` is a NoneType", 1),
        ({"rewards": [1.0, "high"]}, "`rewards[1]` is a str", 1),
        ('{"rewards": [NaN, 1.0]}', "`rewards[0]` is NaN (sample 0, prompt 'p0 ')", 0),
        ('{"rewards": [1.0, -Infinity]}', "`rewards[1]` is -inf", 1),
        ({"rewards": [[1.0], [2.0]]}, "must be 1-D", 0),
        ({"rewards": [1.0, 2.0], "extra_logs": ["x"]}, "`extra_logs` is a list", None),
    ],
    ids=["bare-list", "no-rewards", "length", "null", "string", "nan", "-inf", "2d", "extra-logs"],
)
def test_contract_violations_from_the_server(server, body, expected, index):
    server.default = lambda payload: Reply(body=body)
    rm, _ = remote(server, retries=2)
    with pytest.raises(RewardContractError) as info:
        rm.score(Q[:2], P[:2], L[:2])
    msg = str(info.value)
    assert expected in msg, msg
    assert f"reward server {server.url}" in msg
    assert info.value.sample_index == index
    assert len(server.requests) == 1  # contract violations are not retried


def test_batch_size_splits_requests_and_keeps_order(server):
    rm, _ = remote(server, batch_size=2)
    queries = ["p0 a", "p1 bb", "p2 ccc", "p3 dddd", "p4 eeeee"]
    res = rm.score(queries, P, L)
    assert [len(r["json"]["query"]) for r in server.requests] == [2, 2, 1]
    assert res.rewards.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["json"]["labels"] for r in server.requests] == [["a", "b"], ["c", "d"], ["e"]]
    assert res.extra_logs["mean_len"] == pytest.approx(3.0)  # size-weighted over chunks


def test_batch_size_error_index_is_global(server):
    def reply(payload):
        return Reply(body={"rewards": [float("nan") if q == "p3 r3" else 0.0 for q in payload["query"]]})

    server.default = reply
    rm, _ = remote(server, batch_size=2)
    with pytest.raises(RewardContractError) as info:
        rm.score(Q, P, L)
    assert info.value.sample_index == 3


def test_constructor_validation():
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteReward("ftp://x")
    with pytest.raises(ValueError, match="batch_size"):
        RemoteReward("http://x", batch_size=0)
    with pytest.raises(ValueError, match="retries"):
        RemoteReward("http://x", retries=-1)


def test_requests_reuse_one_kept_alive_connection(server):
    rm, _ = remote(server, batch_size=2)
    for _ in range(3):
        rm.score(Q, P, L)  # three requests per call
    assert len(server.requests) == 9
    assert server.connections == 1
    rm.close()
    rm.score(Q[:1], P[:1], L[:1])  # a closed executor opens a new connection when used again
    assert server.connections == 2
    rm.close()


def test_retries_after_503_stay_on_the_same_connection(server):
    server.script = [Reply(503, {"error": "busy"}), Reply(503, "busy")]
    rm, sleeps = remote(server, retries=3)
    rm.score(Q[:1], P[:1], L[:1])
    assert len(server.requests) == 3 and len(sleeps) == 2 and server.connections == 1
    rm.close()


def test_a_redirect_is_reported_not_followed(server):
    server.default = lambda payload: Reply(307, "", headers={"Location": "http://elsewhere/get_reward"})
    rm, sleeps = remote(server, retries=3)
    with pytest.raises(RemoteRewardError) as info:
        rm.score(Q[:1], P[:1], L[:1])
    assert info.value.status == 307 and "http://elsewhere/get_reward" in str(info.value)
    assert len(server.requests) == 1 and sleeps == []


def test_an_executor_sent_to_another_process_opens_its_own_connection(server):
    import pickle

    rm, _ = remote(server)
    rm.score(Q[:1], P[:1], L[:1])
    copy = pickle.loads(pickle.dumps(rm))
    assert copy.score(Q[:1], P[:1], L[:1]).rewards.tolist() == [2.0]
    assert server.connections == 2
    rm.close()
    copy.close()
