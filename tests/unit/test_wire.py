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
from ledger.legs import NO_EXTRAS, Extras, system_legs
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
        """An accepted reply carries the transaction, the balance after it, its paid and free
        parts, and the account's position (asset and version) for reading one's own write."""
        encoded = wire.reply_bytes(
            command_id=uuid.uuid4(), idempotency_key="k", user_id="ana", status="accepted",
            duplicate=False, transaction_id=uuid.uuid4(), type="top_up", asset="GOLD", amount=5,
            balance=5, error=None, processed_at=NOW, paid=3, version=12,
        )  # fmt: skip
        document = _check(encoded, Reply, "reply")
        assert (document["balance"], document["paid"], document["free"]) == (5, 3, 2)
        assert document["consumed"] is None and document["position"] == "GOLD:12"

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


def _event(**changes: object) -> dict[str, object]:
    """An event document: a spend of 3 unless `changes` say otherwise."""
    fields: dict[str, Any] = dict(
        transaction_id=uuid.uuid4(), command_id=uuid.uuid4(), idempotency_key="k",
        type="spend", user_id="ana", asset="GOLD", amount=3, balance_after=2, version=2,
        description=None, occurred_at=NOW, paid_after=2, consumed_paid=1, extras=NO_EXTRAS,
        held_after=0, debt_after=0, hold_id=None, reverses=None, reason=None,
    )  # fmt: skip
    fields.update(changes)
    fields["legs"] = system_legs(fields["type"], fields["amount"], fields.pop("consumed_paid"),
                                 fields.pop("extras"))  # fmt: skip
    document = wire.event_document(**fields)
    return _check(orjson.dumps(document), LedgerEvent, "event")


def _entries(document: dict[str, Any]) -> list[tuple[str, int]]:
    return [(e["account"], e["amount"]) for e in document["entries"]]


class TestEvents:
    def test_a_spend_event_balances(self) -> None:
        """A spend of paid and free currency has three entries summing to zero: the user's,
        revenue for the paid part and free_spent for the free part."""
        assert _entries(_event()) == [("user", -3), ("revenue", 1), ("free_spent", 2)]

    def test_a_spend_recorded_before_lots_went_to_revenue(self) -> None:
        """A spend from before lots (its paid part unknown) is rebuilt as it was written:
        the whole amount to revenue."""
        document = _event(paid_after=None, consumed_paid=None)
        assert _entries(document)[1:] == [("revenue", 3)]

    def test_an_expiry_booked_by_a_credit(self) -> None:
        """A credit that also books out an expired lot: its source, the expired leg, and the
        user's leg moving by the difference."""
        document = _event(type="top_up", amount=10, consumed_paid=None, extras=Extras(expired=4))
        assert _entries(document) == [("user", 6), ("treasury", -10), ("expired", 4)]

    def test_a_partial_capture_releases_the_rest_in_one_holds_leg(self) -> None:
        """A capture of 3 from a hold of 5: holds gives up 5, revenue and free_spent take
        the 3, the user gets the 2 back."""
        document = _event(type="capture", hold_id="bid-1", extras=Extras(released=2))
        assert _entries(document) == [
            ("user", 2), ("holds", -5), ("revenue", 1), ("free_spent", 2)
        ]  # fmt: skip

    def test_a_reversed_top_up_already_spent_leaves_debt(self) -> None:
        """Reversing a top-up of 10 of which 4 is left: treasury gets 10 back, the user gives
        4, receivable books the 6 owed."""
        document = _event(type="reverse", amount=10, consumed_paid=None, reason="refund",
                          extras=Extras(debt_added=6, reversed_type="top_up"), debt_after=6,
                          reverses=uuid.uuid4())  # fmt: skip
        assert _entries(document) == [("user", -4), ("treasury", 10), ("receivable", -6)]


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
