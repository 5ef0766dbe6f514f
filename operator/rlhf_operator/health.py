"""Liveness/readiness (/healthz) and Prometheus metrics (/metrics) for the operator pod."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .metrics import Metrics


async def start_health_server(port: int, metrics: "Metrics", host: str = "0.0.0.0") -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics_page(_: web.Request) -> web.Response:
        # prometheus-client's exposition of the operator's own registry (see metrics.py).
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
