"""The remote-reward client against a local reward server: one kept-alive connection (httpx, what
rlhf_workers.reward.remote uses) versus a new urllib connection per request (what it used before),
measured in the same run, with the server counting the connections it accepted.

    python bench/remote_reward.py                  # 300 requests of 8 samples each
    python bench/remote_reward.py --requests 1000 --samples 64
    python bench/remote_reward.py --latency-ms 2   # a server 2 ms away (per-connection cost grows with it)

Printed: median milliseconds per request for the old transport (urllib), the new one (an httpx
client kept alive, as RemoteReward holds it) and RemoteReward.score end to end (the transport plus
checking the reply against the reward contract), the transport ratio new/old (below 1 is faster),
and the connections each opened after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def start_server(latency_s: float):
    accepted = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as uvicorn and gunicorn do; without it a kept-alive reply waits 40 ms

        def log_message(self, *args):
            pass

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"rewards": [float(len(q)) for q in payload["query"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            connection = super().get_request()
            accepted["n"] += 1
            if latency_s:
                time.sleep(latency_s)  # a connection set-up that costs a round trip
            return connection

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, accepted


def per_request_urllib(url: str, payload: bytes) -> None:
    request = urllib.request.Request(url, data=payload, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        json.loads(response.read())


def measure(name, call, requests, accepted):
    before = accepted["n"]
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return {"client": name, "ms_per_request": 1000 * statistics.median(times), "connections": accepted["n"] - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    from rlhf_workers.reward.remote import RemoteReward

    server, accepted = start_server(args.latency_ms / 1000)
    url = f"http://127.0.0.1:{server.server_address[1]}/get_reward"
    queries = [f"prompt {i} response" for i in range(args.samples)]
    prompts = [f"prompt {i} " for i in range(args.samples)]
    payload = json.dumps({"query": queries, "prompts": prompts, "labels": [None] * args.samples}).encode()
    import httpx

    client, reward = httpx.Client(), RemoteReward(url, retries=0)
    for _ in range(10):  # warm every path up
        per_request_urllib(url, payload)
        client.post(url, content=payload).json()
        reward.score(queries, prompts)
    rows = [
        measure("urllib, a connection per request", lambda: per_request_urllib(url, payload), args.requests, accepted),
        measure("httpx, kept alive", lambda: client.post(url, content=payload).json(), args.requests, accepted),
        measure("RemoteReward.score (httpx + contract)", lambda: reward.score(queries, prompts), args.requests, accepted),
    ]
    client.close()
    reward.close()
    server.shutdown()
    for row in rows:
        print(f"{row['client']:<40} {row['ms_per_request']:8.3f} ms/request  {row['connections']:5d} new connection(s)")
    print(f"transport ratio httpx/urllib: {rows[1]['ms_per_request'] / rows[0]['ms_per_request']:.2f}")


if __name__ == "__main__":
    main()
