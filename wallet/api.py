"""The HTTP API: the gateway's write routes and the read side's query routes in one app.

Every request body is bounded (`WALLET_API_BODY_BYTES_MAX`) and must be JSON; errors are 4xx
with a reason, and a broker or database outage is a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands import gateway
from commands.client import WalletClient
from foundation.settings import Settings
from projections import http
from projections.events_follower import EventsFollower
from storage.db import create_pool
from wallet.apikeys import KeyVerifier
from wallet.fast_paths import UNAVAILABLE, FastPaths, unavailable
from wallet.httpserver import listening_socket, run_server
from wallet.metrics_server import RequestMetrics, exposition


class BodyLimit:
    """Refuse bodies over the limit (413) and non-JSON bodies (415) before anything reads them."""

    def __init__(self, app: ASGIApp, bytes_max: int) -> None:
        self._app = app
        self._bytes_max = bytes_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # POST only: the only method any route takes a body with. Another method on any route
        # is the router's 405 with Allow, not a content-type refusal.
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            await _refuse(send, 415, "the body must be application/json")
            return
        if int(headers.get(b"content-length", b"0") or 0) > self._bytes_max:
            await _refuse(send, 413, f"the body is larger than {self._bytes_max} bytes")
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self._bytes_max:  # no or a false Content-Length: count as it arrives
                raise _TooLarge
            return message

        try:
            await self._app(scope, bounded, send)
        except _TooLarge:
            await _refuse(send, 413, f"the body is larger than {self._bytes_max} bytes")


class HeadAsGet:
    """HEAD answered as GET without the body (RFC 9110 asks every server to support HEAD on
    what it serves with GET; the routes declare GET only)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self._app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self._app({**scope, "method": "GET"}, receive, headers_only)


class _TooLarge(Exception):
    pass


async def _refuse(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"detail": message}, status_code=status)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings, size_max=settings.db_pool_size_max)
        app.state.keys = KeyVerifier(app.state.pool, settings.api_key_cache_ttl_ms)
        app.state.client = WalletClient(settings)
        app.state.reply_timeout_s = settings.api_reply_timeout_ms / 1000
        app.state.settings = settings
        app.state.follower = None
        await app.state.client.start()
        try:
            if settings.api_balance_cache_max:
                app.state.follower = EventsFollower(settings)
                await app.state.follower.start()
            yield
        finally:
            if app.state.follower is not None:
                await app.state.follower.stop()
            await app.state.client.stop()
            await app.state.pool.close()

    app = FastAPI(title="Dino Wallet", version="1", lifespan=lifespan)
    app.include_router(gateway.router, dependencies=[require_scope("commands:write")])
    both = [require_scope("commands:write"), require_scope("ops")]
    app.include_router(gateway.ops_router, dependencies=both)
    app.include_router(http.router, dependencies=[require_scope("wallets:read")])
    app.include_router(http.ops, dependencies=[require_scope("ops")])
    app.include_router(http.probes)
    app.add_api_route("/metrics", exposition, include_in_schema=False)
    app.add_middleware(FastPaths)
    app.add_middleware(BodyLimit, bytes_max=settings.api_body_bytes_max)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestMetrics)  # outermost: it sees the 413 and 415 answers too

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with where and why, never the input itself: it may be anything a client sent
        (a lone surrogate in it made FastAPI's own answer unencodable: a 500)."""
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, 422)

    async def refuse_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(unavailable(exc), 503)

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, refuse_unavailable)

    return app


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(auto_error=False, description="An API key from `wallet keys create`.")


def require_scope(scope: str) -> Any:
    """A dependency refusing requests without a valid key (401) or without `scope` (403)."""

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    ) -> None:
        if credentials is None:
            raise HTTPException(401, "an API key is required (Authorization: Bearer <key>)",
                                headers=_CHALLENGE)  # fmt: skip
        scopes = await request.app.state.keys.scopes(credentials.credentials)
        if scopes is None:
            raise HTTPException(401, "the API key is not valid", headers=_CHALLENGE)
        if scope not in scopes:
            raise HTTPException(403, f"the API key does not have the {scope} scope")

    return Depends(check)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the API until `stop` is set."""
    sock = listening_socket(settings.api_host, settings.api_port, "WALLET_API_PORT",
                            reuse_port=settings.api_reuse_port)  # fmt: skip
    await run_server(create_app(settings), sock, stop,
                     limit_concurrency=settings.api_concurrency_max)  # fmt: skip
