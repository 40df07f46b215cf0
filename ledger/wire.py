"""The bytes the wallet publishes: replies, ledger events and dead letters, each shape written
once, here. tests/unit/test_wire.py checks every one against its pydantic model
(schemas.replies, schemas.events, schemas.dead_letters) and its committed JSON Schema."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

import orjson

from ledger.legs import Legs
from ledger.monitors import Hit, alert_id
from schemas.dead_letters import DecodeErrorCode
from schemas.events import AccountKind

DLQ_VALUE_BYTES_MAX = 64 * 1024
_USER_ACCOUNT = AccountKind.USER.value


def reply_bytes(
    *,
    command_id: uuid.UUID | str | None,
    idempotency_key: str | None,
    user_id: str | None,
    status: str,
    duplicate: bool,
    transaction_id: uuid.UUID | None,
    type: str | None,
    asset: str | None,
    amount: int | None,
    balance: int | None,
    error: tuple[str, str] | None,  # (code, message)
    processed_at: datetime,
    paid: int | None = None,
    consumed_paid: int | None = None,
    expired: int | None = None,
    held: int | None = None,
    debt: int | None = None,
    hold_id: str | None = None,
    released: int | None = None,
    version: int | None = None,
    transfer: dict[str, object] | None = None,
    purchase: dict[str, object] | None = None,
) -> bytes:
    """A `wallet.replies` message (schemas.replies.Reply). `balance` is the user account's
    balance, what is available (the reply's `balance` adds what holds keep aside: `held`);
    `paid` its paid part (None where unknown: records written before lots existed);
    `consumed_paid` the paid part of an accepted spend's or capture's amount; `version` the
    account's version after an accepted command (its `position`)."""
    consumed = None
    if consumed_paid is not None:
        assert amount is not None
        consumed = {"paid": consumed_paid, "free": amount - consumed_paid}
    free = None if balance is None or paid is None else balance - paid
    return orjson.dumps(
        {
            "command_id": command_id,
            "idempotency_key": idempotency_key,
            "user_id": user_id,
            "status": status,
            "duplicate": duplicate,
            "transaction_id": transaction_id,
            "type": type,
            "asset": asset,
            "amount": amount,
            "balance": None if balance is None else balance + (held or 0),
            "paid": None if free is None else paid,
            "free": free,
            "held": None if balance is None else held or 0,
            "available": balance,
            "debt": None if balance is None else debt or 0,
            "hold_id": hold_id,
            "consumed": consumed,
            "expired": expired,
            "released": released,
            "error": {"code": error[0], "message": error[1]} if error else None,
            "processed_at": processed_at,
            "position": None if version is None else f"{asset}:{version}",
            "transfer": transfer,
            "purchase": purchase,
        }
    )


def event_document(
    *,
    transaction_id: uuid.UUID | None,
    command_id: uuid.UUID,
    idempotency_key: str,
    type: str,
    user_id: str,
    asset: str,
    amount: int,
    balance_after: int,
    version: int,
    description: str | None,
    occurred_at: datetime,
    paid_after: int | None,
    legs: Legs,
    held_after: int,
    debt_after: int,
    hold_id: str | None,
    reverses: uuid.UUID | None,
    reason: str | None,
    transfer_id: uuid.UUID | None = None,
    counterparty: str | None = None,
    purchase_id: uuid.UUID | None = None,
    sku: str | None = None,
) -> dict[str, object]:
    """The `wallet.events` message of one accepted transaction (schemas.events.LedgerEvent):
    its system legs as its record implies them (ledger.legs.system_legs), the user's
    balancing them."""
    # One loop, no generators, enums as they are (orjson writes an enum as its value): every
    # accepted command comes here.
    user_leg = {"account": _USER_ACCOUNT, "amount": 0}
    entries: list[dict[str, object]] = [user_leg]
    user_amount = 0
    for kind, n in legs:
        user_amount -= n
        entries.append({"account": kind, "amount": n})
    user_leg["amount"] = user_amount
    return {
        "transaction_id": transaction_id,
        "command_id": command_id,
        "idempotency_key": idempotency_key,
        "type": type,
        "user_id": user_id,
        "asset": asset,
        "amount": amount,
        "balance_after": balance_after,
        "version": version,
        "paid_after": paid_after,
        "held_after": held_after,
        "debt_after": debt_after,
        "hold_id": hold_id,
        "reverses": reverses,
        "reason": reason,
        "transfer_id": transfer_id,
        "counterparty": counterparty,
        "purchase_id": purchase_id,
        "sku": sku,
        "entries": entries,
        "description": description,
        "occurred_at": occurred_at,
    }


def alert_bytes(
    hit: Hit, user_id: str, asset: str, transaction_id: uuid.UUID, type: str, at: datetime
) -> bytes:
    """A `wallet.alerts` message (schemas.alerts.Alert)."""
    return orjson.dumps(
        {
            "alert_id": alert_id(hit.monitor_id, transaction_id),
            "monitor_id": hit.monitor_id,
            "kind": hit.kind,
            "user_id": user_id,
            "asset": asset,
            "threshold": hit.threshold,
            "value": hit.value,
            "window_s": hit.window_s,
            "transaction_id": transaction_id,
            "type": type,
            "at": at,
        }
    )


def dead_letter_bytes(
    code: DecodeErrorCode,
    reason: str,
    source: tuple[str, int, int],
    key: bytes | None,
    value: bytes | None,
    at: datetime,
) -> bytes:
    """A `wallet.commands.dlq` message (schemas.dead_letters.DeadLetter) for the message at
    `source` (topic, partition, offset): its key and value, the value cut to a bound."""
    raw = (value or b"")[:DLQ_VALUE_BYTES_MAX]
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return orjson.dumps(
        {
            "code": code.value,
            "reason": reason,
            "source_topic": source[0],
            "source_partition": source[1],
            "source_offset": source[2],
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "value": text,
            "value_encoding": encoding,
            "value_bytes": len(value or b""),
            "truncated": len(value or b"") > DLQ_VALUE_BYTES_MAX,
            "refused_at": at,
        }
    )
