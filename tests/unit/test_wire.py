"""Everything the wallet publishes, from the one module that encodes it, read back by the
pydantic model and checked against the committed JSON Schema of its contract."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from pydantic import BaseModel

from ledger import wire
from schemas.dead_letters import DeadLetter, DecodeErrorCode
from schemas.events import LedgerEvent
from schemas.replies import Reply

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "json"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _check(encoded: bytes, model: type[BaseModel], schema: str) -> dict[str, Any]:
    document = orjson.loads(encoded)
    model.model_validate_json(encoded)
    jsonschema.validate(document, json.loads((SCHEMAS / f"{schema}.schema.json").read_text()))
    return document  # type: ignore[no-any-return]


class TestReplies:
    def test_an_accepted_reply(self) -> None:
        """An accepted reply carries the transaction, the balance after it and its paid and
        free parts."""
        encoded = wire.reply_bytes(
            command_id=uuid.uuid4(), idempotency_key="k", user_id="ana", status="accepted",
            duplicate=False, transaction_id=uuid.uuid4(), type="top_up", asset="GOLD", amount=5,
            balance=5, error=None, processed_at=NOW, paid=3,
        )  # fmt: skip
        document = _check(encoded, Reply, "reply")
        assert (document["balance"], document["paid"], document["free"]) == (5, 3, 2)
        assert document["consumed"] is None

    def test_a_spend_reply_says_what_it_consumed(self) -> None:
        """An accepted spend's reply splits its amount into paid and free currency taken."""
        encoded = wire.reply_bytes(
            command_id=uuid.uuid4(), idempotency_key="k", user_id="ana", status="accepted",
            duplicate=False, transaction_id=uuid.uuid4(), type="spend", asset="GOLD", amount=5,
            balance=1, error=None, processed_at=NOW, paid=1, consumed_paid=2,
        )  # fmt: skip
        assert _check(encoded, Reply, "reply")["consumed"] == {"paid": 2, "free": 3}

    def test_a_refusal_of_what_is_not_a_command(self) -> None:
        """A refusal knows only the envelope, and echoes the producer's command_id as sent."""
        encoded = wire.reply_bytes(
            command_id="0F8E61CA-3A84-4DBC-AD24-583436CBFC0B", idempotency_key=None,
            user_id=None, status="rejected", duplicate=False, transaction_id=None, type=None,
            asset=None, amount=None, balance=None, error=("invalid_command", "why"),
            processed_at=NOW,
        )  # fmt: skip
        document = _check(encoded, Reply, "reply")
        assert document["error"] == {"code": "invalid_command", "message": "why"}


class TestEvents:
    def test_a_spend_event_balances(self) -> None:
        """A spend of paid and free currency has three entries summing to zero: the user's,
        revenue for the paid part and free_spent for the free part."""
        document = wire.event_document(
            transaction_id=uuid.uuid4(), command_id=uuid.uuid4(), idempotency_key="k",
            type="spend", user_id="ana", asset="GOLD", amount=3, balance_after=2, version=2,
            description=None, occurred_at=NOW, paid_after=2, consumed_paid=1, expired=0,
        )  # fmt: skip
        checked = _check(orjson.dumps(document), LedgerEvent, "event")
        entries = [(e["account"], e["amount"]) for e in checked["entries"]]
        assert entries == [("user", -3), ("revenue", 1), ("free_spent", 2)]

    def test_a_spend_recorded_before_lots_went_to_revenue(self) -> None:
        """A spend from before lots (its paid part unknown) is rebuilt as it was written:
        the whole amount to revenue."""
        document = wire.event_document(
            transaction_id=uuid.uuid4(), command_id=uuid.uuid4(), idempotency_key="k",
            type="spend", user_id="ana", asset="GOLD", amount=3, balance_after=2, version=2,
            description=None, occurred_at=NOW, paid_after=None, consumed_paid=None, expired=0,
        )  # fmt: skip
        checked = _check(orjson.dumps(document), LedgerEvent, "event")
        assert [(e["account"], e["amount"]) for e in checked["entries"]][1:] == [("revenue", 3)]

    def test_an_expiry_booked_by_a_credit(self) -> None:
        """A credit that also books out an expired lot: its source, the expired leg, and the
        user's leg moving by the difference."""
        document = wire.event_document(
            transaction_id=uuid.uuid4(), command_id=uuid.uuid4(), idempotency_key="k",
            type="top_up", user_id="ana", asset="GOLD", amount=10, balance_after=10, version=3,
            description=None, occurred_at=NOW, paid_after=10, consumed_paid=None, expired=4,
        )  # fmt: skip
        checked = _check(orjson.dumps(document), LedgerEvent, "event")
        entries = [(e["account"], e["amount"]) for e in checked["entries"]]
        assert entries == [("user", 6), ("treasury", -10), ("expired", 4)]


class TestDeadLetters:
    def test_bytes_that_are_not_utf8_go_as_base64(self) -> None:
        """A value that is not UTF-8 is kept as base64, and says so."""
        source = ("wallet.commands", 3, 7)
        encoded = wire.dead_letter_bytes(
            DecodeErrorCode.NOT_UTF8, "not UTF-8", source, b"ana", b"\xff\xfe", NOW
        )
        document = _check(encoded, DeadLetter, "dead_letter")
        assert document["value_encoding"] == "base64" and document["value_bytes"] == 2

    def test_a_large_value_is_cut(self) -> None:
        """A value past the bound is truncated, and says so."""
        value = b"x" * (wire.DLQ_VALUE_BYTES_MAX + 10)
        source = ("wallet.commands", 0, 0)
        encoded = wire.dead_letter_bytes(
            DecodeErrorCode.TOO_LARGE, "too large", source, None, value, NOW
        )
        document = _check(encoded, DeadLetter, "dead_letter")
        assert document["truncated"] and len(document["value"]) == wire.DLQ_VALUE_BYTES_MAX
