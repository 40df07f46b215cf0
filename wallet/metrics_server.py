"""The small HTTP server beside a worker role (`/metrics` and `/health`), and the API's
request metrics.

One registry per process: under `wallet up`, which runs every role in one process, the API's
`/metrics` shows them all; `wallet processor` and `wallet projector` serve theirs, with a
`/health` probe, on `WALLET_METRICS_HOST:WALLET_METRICS_PORT`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foundation.errors import ConfigError
from foundation.metrics import HTTP_REQUESTS, HTTP_SECONDS
from foundation.settings import Settings
from wallet.httpserver import listening_socket, run_server


def health_url(settings: Settings) -> str:
    """Where this machine's role answers /health: the metrics port when set, else the API's.
    A wildcard listen address is reached through loopback."""
    host, port = settings.api_host, settings.api_port
    if settings.metrics_port:
        host, port = settings.metrics_host, settings.metrics_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/health"


def exposition() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware counting and timing requests by route template (`/wallet/{userId}/balance`,
    or `unmatched`), so that the label set stays bounded whatever paths clients send."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started_s = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, recorded)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started_s)


def metrics_app(role: str, health: Callable[[], Mapping[str, Any] | None]) -> Starlette:
    """`/metrics`, and `/health`: 200 with `health()`'s details, 503 when it returns None."""

    async def metrics(_: Request) -> Response:
        return exposition()

    async def healthy(_: Request) -> Response:
        details = health()
        if details is None:
            return JSONResponse({"status": "unhealthy", "role": role}, 503)
        return JSONResponse({"status": "ok", "role": role, **details})

    return Starlette(routes=[Route("/metrics", metrics), Route("/health", healthy)])


async def beside(
    settings: Settings, role: str, health: Callable[[], Mapping[str, Any] | None],
    work: Coroutine[Any, Any, None],
) -> None:  # fmt: skip
    """Run a role's `work` with its metrics server beside it (none when WALLET_METRICS_PORT is
    0). The server stops when the work ends. A port already taken is a ConfigError before the
    work starts: a worker nobody can watch should not run unnoticed."""
    if settings.metrics_port == 0:
        await work
        return
    try:
        sock = listening_socket(settings.metrics_host, settings.metrics_port, "WALLET_METRICS_PORT")
    except ConfigError:
        work.close()  # never started: closed, so Python does not warn it was never awaited
        raise
    done = asyncio.Event()
    server = asyncio.create_task(run_server(metrics_app(role, health), sock, done), name="metrics")
    try:
        await work
    finally:
        done.set()
        await server
