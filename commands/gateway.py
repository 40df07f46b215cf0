"""The HTTP gateway's write routes: a REST call becomes a command on Kafka; the reply, awaited
for a bounded time, becomes the response. JSON uses the earlier REST wallets' camelCase names.

Status codes: 201 accepted, 200 a duplicate of an accepted command, 402 insufficient funds
(the request was valid, the wallet cannot pay), 409 idempotency key reused for another command,
422 invalid input or unknown asset, 202 with the command id when the reply is late (the command
will still be processed exactly once: retry with the same key to learn its outcome).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from commands.client import WalletClient
from schemas.codec import repeated_key
from schemas.commands import (
    AMOUNT_MAX,
    AssetCode,
    Command,
    CommandType,
    Description,
    IdempotencyKey,
    UserId,
)

log = structlog.get_logger("wallet.gateway")


async def _no_repeated_keys(request: Request) -> None:
    """422 for a body whose JSON repeats a key: a proxy or signature check that reads the
    first `amount` and a parser that keeps the last must never see two different commands."""
    repeated = repeated_key(await request.body())
    if repeated is not None:
        message = f"the key {repeated!r} appears more than once"
        raise RequestValidationError([{"loc": ("body", repeated), "msg": message,
                                       "type": "duplicate_key"}])  # fmt: skip


router = APIRouter(prefix="/wallet", tags=["commands"], dependencies=[Depends(_no_repeated_keys)])

_REJECTION_STATUS = {"insufficient_funds": 402, "idempotency_key_reused": 409}


class WriteRequest(BaseModel):
    """A top-up, bonus or spend as the REST wallets took it. Strict: integers only."""

    model_config = ConfigDict(extra="forbid", strict=True)

    userId: UserId
    assetId: AssetCode
    amount: int = Field(ge=1, le=AMOUNT_MAX, description="Integer minor units.")
    idempotencyKey: IdempotencyKey
    description: Description | None = None


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339_text(value: object) -> object:
    """Only an RFC 3339 string is a time here: pydantic's lax parsing (needed, as a time
    arrives as a string) would also take a number, or a numeric string, as seconds."""
    if value is not None and not (isinstance(value, str) and _RFC3339.fullmatch(value)):
        raise ValueError("expiresAt is an RFC 3339 date-time with a zone")
    return value


class CreditRequest(WriteRequest):
    """A top-up or bonus, whose lot may expire."""

    expiresAt: Annotated[AwareDatetime | None, BeforeValidator(_rfc3339_text)] = Field(
        default=None, strict=False,
        description="When the credited lot stops being spendable (RFC 3339, with zone).",
    )  # fmt: skip


class WriteError(BaseModel):
    code: str
    message: str


class WriteConsumed(BaseModel):
    paid: int
    free: int


class WriteResponse(BaseModel):
    status: str
    duplicate: bool
    transactionId: str | None
    userId: str
    assetId: str
    amount: int
    balance: int | None
    paid: int | None  # the paid part of balance; the rest is free
    free: int | None
    consumed: WriteConsumed | None  # an accepted spend: what it took
    expired: int | None  # what the transaction booked out of lots whose expiry had come
    error: WriteError | None


async def _write(kind: CommandType, body: WriteRequest, request: Request) -> JSONResponse:
    state = request.app.state
    status, content = await write(kind, body, state.client, state.reply_timeout_s)
    return JSONResponse(content, status_code=status)


async def write(
    kind: CommandType, body: WriteRequest, client: WalletClient, timeout_s: float
) -> tuple[int, dict[str, Any]]:
    """Publish the command and await its reply: the response's status code and content."""
    try:
        command = Command(
            command_id=uuid.uuid4(),
            idempotency_key=body.idempotencyKey,
            type=kind,
            user_id=body.userId,
            asset=body.assetId,
            amount=body.amount,
            description=body.description,
            reply_to=client.reply_topic,
            sent_at=datetime.now(UTC),
            expires_at=getattr(body, "expiresAt", None),
        )
    except ValidationError as exc:  # a rule across fields (expiresAt too far ahead)
        return 422, {"detail": [{"msg": e["msg"], "loc": e["loc"]} for e in exc.errors()]}
    # Every log line of this request's handling, ours or the client's, carries these two.
    with structlog.contextvars.bound_contextvars(
        command_id=str(command.command_id), user_id=command.user_id
    ):
        future = await client.publish(command)
        log.debug("command published", type=kind.value)
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            log.info("reply late; answered 202", timeout_s=timeout_s)
            return 202, {"status": "pending", "commandId": str(command.command_id)}
    return _status_code(reply), _response(reply, body)


def _response(reply: dict[str, Any], body: WriteRequest) -> dict[str, Any]:
    return {
        "status": reply["status"],
        "duplicate": reply["duplicate"],
        "transactionId": reply["transaction_id"],
        "userId": body.userId,
        "assetId": body.assetId,
        "amount": body.amount,
        "balance": reply["balance"],
        "paid": reply["paid"],
        "free": reply["free"],
        "consumed": reply["consumed"],
        "expired": reply["expired"],
        "error": reply["error"],
    }


def _status_code(reply: dict[str, Any]) -> int:
    if reply["status"] == "accepted":
        return 200 if reply["duplicate"] else 201
    return _REJECTION_STATUS.get(reply["error"]["code"], 422)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": WriteResponse, "description": "accepted"},
    200: {"model": WriteResponse, "description": "a duplicate of an accepted command"},
    202: {"description": "reply late; the command will still be processed"},
    402: {"model": WriteResponse, "description": "insufficient funds"},
    409: {"model": WriteResponse, "description": "idempotency key reused for another command"},
    422: {"description": "invalid input or unknown asset"},
}


@router.post("/topup", status_code=201, responses=_RESPONSES)
async def top_up(body: CreditRequest, request: Request) -> JSONResponse:
    """Credit a user's wallet from the treasury (a paid top-up)."""
    return await _write(CommandType.TOP_UP, body, request)


@router.post("/bonus", status_code=201, responses=_RESPONSES)
async def bonus(body: CreditRequest, request: Request) -> JSONResponse:
    """Credit a user's wallet from the bonus pool (free credits)."""
    return await _write(CommandType.BONUS, body, request)


@router.post("/spend", status_code=201, responses=_RESPONSES)
async def spend(body: WriteRequest, request: Request) -> JSONResponse:
    """Debit a user's wallet to revenue; refused with 402 when the balance is too low."""
    return await _write(CommandType.SPEND, body, request)
