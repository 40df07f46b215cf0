"""The API's busiest requests answered before FastAPI's route stack, whose dependencies,
validation and encoding cost several times the work itself: a balance read from the balance
cache, and a top-up, bonus or spend.

Only a plain request is answered here: no query string, a valid key with the route's scope,
and (for a read) a user id the route accepts and a cache that vouches for its balances, or
(for a write) a body the route's own model accepts with no repeated JSON key. Anything else
goes on to the routes, which answer it as ever, refusals included; a write's body, read here,
is handed on unchanged. Both paths share the code that does the work (`gateway.write`, the
follower's `balances`), so they answer with the same bytes.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import asyncpg
import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands import gateway
from foundation.errors import WalletError
from projections import http
from projections.balance_cache import balance_document
from schemas.codec import repeated_key
from schemas.commands import CommandType

# Failures of a service the API depends on: 503, never 500 (the routes' handlers answer them).
UNAVAILABLE = (
    WalletError, KafkaError, OSError, TimeoutError, asyncpg.InterfaceError,
    asyncpg.InternalClientError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
)  # fmt: skip
_BALANCE_PATH = re.compile(f"/wallet/({http.USER_ID_PATTERN})/balance")
_BALANCE_ROUTE = "/wallet/{userId}/balance"
_WRITES = {"/wallet/topup": CommandType.TOP_UP, "/wallet/bonus": CommandType.BONUS,
           "/wallet/spend": CommandType.SPEND}  # fmt: skip


class FastPaths:
    """ASGI middleware in front of the routes (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["query_string"]:
            await self._app(scope, receive, send)
        elif scope["method"] == "GET":
            found = _BALANCE_PATH.fullmatch(scope["path"])
            answer = None
            if found is not None and len(found[1]) <= http.USER_ID_CHARS_MAX:
                answer = await _balances(scope, found[1])
            await self._answer_or_pass(answer, scope, receive, send, _BALANCE_ROUTE)
        elif scope["method"] == "POST" and scope["path"] in _WRITES:
            body = await _body(receive)
            answer = await _write(scope, _WRITES[scope["path"]], body)
            replayed = _replay(body, receive)
            await self._answer_or_pass(answer, scope, replayed, send, scope["path"])
        else:
            await self._app(scope, receive, send)

    async def _answer_or_pass(
        self, answer: tuple[int, Any] | None, scope: Scope, receive: Receive, send: Send,
        route: str,
    ) -> None:  # fmt: skip
        if answer is None:
            await self._app(scope, receive, send)
            return
        scope["route"] = SimpleNamespace(path=route)  # the template metrics count requests by
        status, content = answer
        body = orjson.dumps(content)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


async def _allowed(scope: Scope, needed: str) -> bool:
    """Whether the request's bearer key is valid and has the scope."""
    # The first Authorization header, as the routes' HTTPBearer reads it.
    header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    scopes = await scope["app"].state.keys.scopes(token)
    return scopes is not None and needed in scopes


async def _balances(scope: Scope, user_id: str) -> tuple[int, Any] | None:
    state = scope["app"].state
    if state.follower is None:
        return None
    try:
        if not await _allowed(scope, "wallets:read"):
            return None
        found = await state.follower.balances(state.pool, user_id)
    except UNAVAILABLE:
        return None  # the route meets the failure again and answers it (503)
    return None if found is None else (200, balance_document(user_id, found))


async def _write(scope: Scope, kind: CommandType, body: bytes) -> tuple[int, Any] | None:
    state = scope["app"].state
    try:
        request = gateway.WriteRequest.model_validate_json(body)
    except ValidationError:
        return None
    if repeated_key(body) is not None:
        return None
    try:
        if not await _allowed(scope, "commands:write"):
            return None
    except UNAVAILABLE:
        return None  # the route meets the failure again and answers it (503)
    try:
        return await gateway.write(kind, request, state.client, state.reply_timeout_s)
    except UNAVAILABLE as exc:  # perhaps published: answered here, never sent again
        return 503, unavailable(exc)


def unavailable(exc: Exception) -> dict[str, str]:
    """The 503 answer to a failure of a service the API depends on."""
    return {"detail": f"service unavailable: {type(exc).__name__}"}


async def _body(receive: Receive) -> bytes:
    """The whole request body (its size is bounded by the BodyLimit middleware outside)."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, then waits on the connection as the original does."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
