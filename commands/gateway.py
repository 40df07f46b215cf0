"""The HTTP gateway's write routes: a REST call becomes a command on Kafka; the reply, awaited
for a bounded time, becomes the response. JSON uses the earlier REST wallets' camelCase names.

Status codes: 201 accepted, 200 a duplicate of an accepted command, 402 insufficient funds,
in debt or past a daily cap (the request was valid, the wallet cannot pay), 404 no such hold,
transaction or receiver, 409 idempotency key reused for another command, or a hold or
transaction resolved already, 422 invalid input or unknown asset, 202 with the command id when
the reply is late (the command will still be processed exactly once: retry with the same key
to learn its outcome; a transfer's 202 names the transfer, whose outcome
GET /wallet/transfers/{id} tells).
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
from ledger.plan import transaction_id_for
from schemas.codec import repeated_key
from schemas.commands import (
    AMOUNT_MAX,
    HOLD_EXPIRES_IN_S_MAX,
    HOLD_EXPIRES_IN_S_MIN,
    PARTS_MAX,
    AssetCode,
    Command,
    CommandType,
    Description,
    HoldId,
    IdempotencyKey,
    Part,
    Sku,
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
# Routes that need the `ops` scope besides (a reverse gives money back or takes it away).
ops_router = APIRouter(
    prefix="/wallet", tags=["commands"], dependencies=[Depends(_no_repeated_keys)]
)

_REJECTION_STATUS = {
    "insufficient_funds": 402,
    "in_debt": 402,
    "daily_limit_exceeded": 402,
    "hold_not_found": 404,
    "transaction_not_found": 404,
    "unknown_wallet": 404,
    "idempotency_key_reused": 409,
    "hold_id_taken": 409,
    "hold_already_captured": 409,
    "hold_already_released": 409,
    "hold_expired": 409,
    "already_reversed": 409,
}
Amount = Annotated[int, Field(ge=1, le=AMOUNT_MAX, description="Integer minor units.")]


class _Request(BaseModel):
    """What every write names. Strict: integers only."""

    model_config = ConfigDict(extra="forbid", strict=True)

    userId: UserId
    idempotencyKey: IdempotencyKey
    description: Description | None = None

    def asset(self) -> str:
        """The command's asset (its envelope's)."""
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        """The command's fields this request sets besides the envelope."""
        return {}


class _AssetRequest(_Request):
    """A write on one asset."""

    assetId: AssetCode

    def asset(self) -> str:
        return self.assetId


class WriteRequest(_AssetRequest):
    """A top-up, bonus or spend as the REST wallets took it."""

    amount: Amount

    def fields(self) -> dict[str, Any]:
        return {"amount": self.amount}


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

    def fields(self) -> dict[str, Any]:
        return {"amount": self.amount, "expires_at": self.expiresAt}


class HoldRequest(WriteRequest):
    """Set `amount` aside until captured, released or expired."""

    holdId: HoldId | None = Field(default=None, description="Default: the transaction id.")
    expiresInS: int = Field(
        ge=HOLD_EXPIRES_IN_S_MIN, le=HOLD_EXPIRES_IN_S_MAX,
        description="Seconds until the hold expires (1 s to 30 days).",
    )  # fmt: skip

    def fields(self) -> dict[str, Any]:
        return {"amount": self.amount, "hold_id": self.holdId, "expires_in_s": self.expiresInS}


class CaptureRequest(_AssetRequest):
    """Spend what a hold keeps: all of it, or `amount` (the rest goes back)."""

    holdId: HoldId
    amount: Amount | None = None

    def fields(self) -> dict[str, Any]:
        return {"hold_id": self.holdId, "amount": self.amount}


class ReleaseRequest(_AssetRequest):
    """Give what a hold keeps back to the wallet."""

    holdId: HoldId

    def fields(self) -> dict[str, Any]:
        return {"hold_id": self.holdId}


class ReverseRequest(_AssetRequest):
    """Undo a spend, capture, top-up or bonus (a refund, a chargeback): once."""

    transactionId: uuid.UUID = Field(strict=False, description="The transaction to undo.")
    reason: Description = Field(min_length=1)

    def fields(self) -> dict[str, Any]:
        return {"transaction_id": self.transactionId, "reason": self.reason}


class TransferRequest(WriteRequest):
    """Give `amount` to another user, on any partition."""

    toUserId: UserId = Field(description="Who receives it (not the sender).")

    def fields(self) -> dict[str, Any]:
        return {"amount": self.amount, "to_user_id": self.toUserId}


class PurchasePartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    assetId: AssetCode
    amount: Amount


class PurchaseRequest(_Request):
    """Pay `costs` for a `sku` and receive `grants`: all of it, or nothing."""

    costs: list[PurchasePartRequest] = Field(min_length=1, max_length=PARTS_MAX)
    grants: list[PurchasePartRequest] = Field(
        default=[], max_length=PARTS_MAX,
        description="What the purchase gives (a conversion: exactly one cost).",
    )  # fmt: skip
    sku: Sku

    def asset(self) -> str:
        return self.costs[0].assetId

    def fields(self) -> dict[str, Any]:
        return {"costs": [Part(asset=p.assetId, amount=p.amount) for p in self.costs],
                "grants": [Part(asset=p.assetId, amount=p.amount) for p in self.grants] or None,
                "sku": self.sku}  # fmt: skip


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
    amount: int | None
    balance: int | None  # the wallet's total: available + held
    paid: int | None  # the paid part of what is available; the rest is free
    free: int | None
    held: int | None  # kept aside by open holds
    available: int | None
    debt: int | None  # owed for reversed credits it had spent
    holdId: str | None
    consumed: WriteConsumed | None  # an accepted spend or capture: what it took
    expired: int | None  # what the transaction booked out of lots whose expiry had come
    released: int | None  # held money given back (a capture's rest, expired holds)
    error: WriteError | None
    position: str | None  # accepted: ASSET:VERSION, for a balance read's `?after=`
    transfer: dict[str, Any] | None  # a transfer: id, fromUserId, toUserId, status
    # a purchase: id, sku, kind, refusedAsset, parts [{assetId, amount, paid, balance,
    # available, position}]
    purchase: dict[str, Any] | None


async def _write(kind: CommandType, body: _Request, request: Request) -> JSONResponse:
    state = request.app.state
    status, content = await write(kind, body, state.client, state.reply_timeout_s)
    return JSONResponse(content, status_code=status)


async def write(
    kind: CommandType, body: _Request, client: WalletClient, timeout_s: float
) -> tuple[int, dict[str, Any]]:
    """Publish the command and await its reply: the response's status code and content."""
    try:
        command = Command(
            command_id=uuid.uuid4(),
            idempotency_key=body.idempotencyKey,
            type=kind,
            user_id=body.userId,
            asset=body.asset(),
            description=body.description,
            reply_to=client.reply_topic,
            sent_at=datetime.now(UTC),
            **body.fields(),
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
            return 202, _pending(command)
    return _status_code(reply), _response(reply, body)


def _pending(command: Command) -> dict[str, Any]:
    """A late reply's answer; a transfer's names the transfer, whose outcome
    GET /wallet/transfers/{id} tells (it is late whenever the receiver's side is)."""
    pending: dict[str, Any] = {"status": "pending", "commandId": str(command.command_id)}
    if command.type is CommandType.TRANSFER:
        pending["transferId"] = str(transaction_id_for(command.user_id, command.idempotency_key))
    return pending


def _response(reply: dict[str, Any], body: _Request) -> dict[str, Any]:
    return {
        "status": reply["status"],
        "duplicate": reply["duplicate"],
        "transactionId": reply["transaction_id"],
        "userId": body.userId,
        "assetId": reply["asset"] or body.asset(),
        "amount": reply["amount"],
        "balance": reply["balance"],
        "paid": reply["paid"],
        "free": reply["free"],
        "held": reply["held"],
        "available": reply["available"],
        "debt": reply["debt"],
        "holdId": reply["hold_id"],
        "consumed": reply["consumed"],
        "expired": reply["expired"],
        "released": reply["released"],
        "error": reply["error"],
        "position": reply.get("position"),  # absent from replies written before it
        "transfer": _transfer(reply.get("transfer")),
        "purchase": _purchase(reply.get("purchase")),
    }


def _transfer(transfer: dict[str, Any] | None) -> dict[str, Any] | None:
    if transfer is None:
        return None
    return {"id": transfer["id"], "fromUserId": transfer["from_user_id"],
            "toUserId": transfer["to_user_id"], "status": transfer["status"]}  # fmt: skip


def _purchase(purchase: dict[str, Any] | None) -> dict[str, Any] | None:
    if purchase is None:
        return None
    parts = [{"assetId": p["asset"], "amount": p["amount"], "paid": p["paid"],
              "balance": p["balance"], "available": p["available"], "position": p["position"]}
             for p in purchase["parts"] or ()]  # fmt: skip
    return {"id": purchase["id"], "sku": purchase["sku"], "kind": purchase["kind"],
            "refusedAsset": purchase["refused_asset"],
            "parts": parts if purchase["parts"] is not None else None}  # fmt: skip


def _status_code(reply: dict[str, Any]) -> int:
    if reply["status"] == "accepted":
        return 200 if reply["duplicate"] else 201
    return _REJECTION_STATUS.get(reply["error"]["code"], 422)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": WriteResponse, "description": "accepted"},
    200: {"model": WriteResponse, "description": "a duplicate of an accepted command"},
    202: {"description": "reply late; the command will still be processed"},
    402: {"model": WriteResponse, "description": "insufficient funds, in debt, or a daily cap"},
    404: {"model": WriteResponse, "description": "no such hold, transaction or receiver"},
    409: {
        "model": WriteResponse,
        "description": "idempotency key reused, or the hold or transaction resolved already",
    },
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


@router.post("/hold", status_code=201, responses=_RESPONSES)
async def hold(body: HoldRequest, request: Request) -> JSONResponse:
    """Set money aside (auction bids, entry fees): not spendable, not lost, until captured,
    released or expired."""
    return await _write(CommandType.HOLD, body, request)


@router.post("/capture", status_code=201, responses=_RESPONSES)
async def capture(body: CaptureRequest, request: Request) -> JSONResponse:
    """Spend what a hold keeps, all or part; the rest goes back to the wallet."""
    return await _write(CommandType.CAPTURE, body, request)


@router.post("/release", status_code=201, responses=_RESPONSES)
async def release(body: ReleaseRequest, request: Request) -> JSONResponse:
    """Give what a hold keeps back to the wallet."""
    return await _write(CommandType.RELEASE, body, request)


@router.post("/transfer", status_code=201, responses=_RESPONSES)
async def transfer(body: TransferRequest, request: Request) -> JSONResponse:
    """Give currency to another player (a gift, a trade), on any partition: 201 completed,
    or refused by the receiver's side (404 no wallet, 422 a limit) with the amount back in
    the sender's wallet; 202 with the transfer's id while the receiver's side has not
    decided (GET /wallet/transfers/{id})."""
    return await _write(CommandType.TRANSFER, body, request)


@router.post("/purchase", status_code=201, responses=_RESPONSES)
async def purchase(body: PurchaseRequest, request: Request) -> JSONResponse:
    """Buy an item (costs in up to 8 currencies) or convert one currency into others
    (grants): every cost and grant applies, or none does. 402 when a cost cannot be paid
    (insufficient funds, in debt, a daily cap), 422 when a grant passes a balance limit;
    `purchase.refusedAsset` names the asset that refused it."""
    return await _write(CommandType.PURCHASE, body, request)


@ops_router.post("/reverse", status_code=201, responses=_RESPONSES)
async def reverse(body: ReverseRequest, request: Request) -> JSONResponse:
    """Undo a spend, capture, top-up or bonus, once (needs the ops scope besides): a spend
    goes back to its lots; a credit already spent leaves debt that later credits pay."""
    return await _write(CommandType.REVERSE, body, request)
