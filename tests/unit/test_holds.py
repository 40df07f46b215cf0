"""Holds: set aside, captured in full or in part, released, expired; each resolved once."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from ledger.account import HOLDS_OPEN_MAX
from ledger.plan import ProcessedRow, outbox_row_of, transaction_id_for
from tests.integration.helpers import command
from tests.unit.ledger_harness import Ledger, held_for


def _funded(paid: int = 30, free: int = 5) -> Ledger:
    ledger = Ledger()
    ledger.one("top_up", paid)
    ledger.one("bonus", free)
    return ledger


def _reply(row: ProcessedRow) -> dict[str, object]:
    return dict(orjson.loads(outbox_row_of(row).reply_value or b""))


def _legs(row: ProcessedRow) -> list[tuple[str, int]]:
    event = orjson.loads(outbox_row_of(row).event_value or b"")
    return [(e["account"], e["amount"]) for e in event["entries"]]


class TestHold:
    def test_a_hold_moves_money_aside_not_away(self) -> None:
        """A hold of 20 leaves the total at 35: 15 available, 20 held, in the holds account."""
        ledger = _funded()
        row = ledger.one("hold", 20, hold_id="bid-1", **held_for(60))
        reply = _reply(row)
        assert (reply["balance"], reply["available"], reply["held"]) == (35, 15, 20)
        assert reply["hold_id"] == "bid-1" and _legs(row) == [("user", -20), ("holds", 20)]
        assert ledger.account().held == 20

    def test_a_hold_without_a_name_is_named_by_its_transaction(self) -> None:
        """hold_id defaults to the hold's transaction id, which the reply names."""
        row = _funded().one("hold", 1, **held_for(60))
        assert row.hold_id == str(row.transaction_id)

    def test_held_money_is_not_spendable(self) -> None:
        """With 20 of 35 held, a spend of 16 is refused."""
        ledger = _funded()
        ledger.one("hold", 20, **held_for(60))
        assert ledger.one("spend", 16).error_code == "insufficient_funds"

    def test_a_hold_name_is_used_once(self) -> None:
        """A second hold with the name of an open (or resolved) one is refused."""
        ledger = _funded()
        ledger.one("hold", 1, hold_id="h", **held_for(60))
        assert ledger.one("hold", 1, hold_id="h", **held_for(60)).error_code == "hold_id_taken"
        ledger.one("release", hold_id="h")
        assert ledger.one("hold", 1, hold_id="h", **held_for(60)).error_code == "hold_id_taken"

    def test_open_holds_are_bounded(self) -> None:
        """Past HOLDS_OPEN_MAX open holds a wallet's next hold is refused."""
        ledger = _funded(paid=HOLDS_OPEN_MAX + 1)
        ledger.send(*(command("hold", "u", 1, expires_in_s=60) for _ in range(HOLDS_OPEN_MAX)))
        assert ledger.one("hold", 1, **held_for(60)).error_code == "too_many_holds"


class TestCapture:
    def test_a_partial_capture_spends_part_and_gives_the_rest_back(self) -> None:
        """Hold 20 (5 free + 15 paid, free first), capture 15: 5 free and 10 paid are spent,
        the other 5 paid go back to the wallet, and the hold is closed."""
        ledger = _funded()
        ledger.one("hold", 20, hold_id="bid", **held_for(60))
        row = ledger.one("capture", 15, hold_id="bid")
        reply = _reply(row)
        assert reply["consumed"] == {"paid": 10, "free": 5} and reply["released"] == 5
        assert (reply["balance"], reply["held"], reply["paid"]) == (20, 0, 20)
        assert _legs(row) == [("user", 5), ("holds", -20), ("revenue", 10), ("free_spent", 5)]

    def test_a_capture_without_amount_takes_it_all(self) -> None:
        """A capture naming no amount spends everything the hold keeps."""
        ledger = _funded()
        ledger.one("hold", 7, hold_id="fee", **held_for(60))
        row = ledger.one("capture", hold_id="fee")
        assert (row.amount, row.released_amount, row.balance_after) == (7, None, 28)

    def test_blnk_62_capturing_more_than_was_held_is_refused(self) -> None:
        """(Blnk #62) A capture of 21 from a hold of 20 is refused and moves nothing."""
        ledger = _funded()
        ledger.one("hold", 20, hold_id="bid", **held_for(60))
        row = ledger.one("capture", 21, hold_id="bid")
        assert row.error_code == "capture_exceeds_hold" and ledger.account().held == 20

    def test_a_hold_is_captured_once(self) -> None:
        """A second capture of the same hold is refused as captured already."""
        ledger = _funded()
        ledger.one("hold", 5, hold_id="bid", **held_for(60))
        ledger.one("capture", 2, hold_id="bid")
        assert ledger.one("capture", 1, hold_id="bid").error_code == "hold_already_captured"
        assert ledger.one("release", hold_id="bid").error_code == "hold_already_captured"


class TestRelease:
    def test_a_release_gives_each_piece_back_to_its_lot(self) -> None:
        """Released money goes back to the lots it came from: paid stays paid, free stays
        free, and the wallet is as before the hold."""
        ledger = _funded()
        before = ledger.account()
        ledger.one("hold", 20, hold_id="h", **held_for(60))
        row = ledger.one("release", hold_id="h")
        after = ledger.account()
        assert (after.balance, after.paid, after.held) == (before.balance, before.paid, 0)
        assert {lot.lot_id: lot.remaining for lot in after.lots} == {
            lot.lot_id: lot.remaining for lot in before.lots
        }
        assert _legs(row) == [("user", 20), ("holds", -20)]

    def test_blnk_41_releasing_twice_is_refused(self) -> None:
        """(Blnk #41) A second release of a hold is refused; nothing moves twice, even when
        both are in one batch."""
        ledger = _funded()
        ledger.one("hold", 20, hold_id="h", **held_for(60))
        first, second = ledger.send(command("release", "u", None, hold_id="h"),
                                    command("release", "u", None, hold_id="h"))  # fmt: skip
        assert (first.status, second.error_code) == ("accepted", "hold_already_released")
        assert ledger.one("release", hold_id="h").error_code == "hold_already_released"
        assert ledger.account().balance == 35

    def test_an_unknown_hold_is_not_found(self) -> None:
        """A release naming no hold of this wallet is refused."""
        assert _funded().one("release", hold_id="nope").error_code == "hold_not_found"


class TestExpiry:
    def test_blnk_182_an_expired_hold_cannot_be_captured(self) -> None:
        """(Blnk #182) Past its expiry a hold is not captured: the capture is refused as
        expired, and the wallet's next transaction gives the money back, once."""
        ledger = _funded()
        ledger.one("hold", 20, hold_id="bid", **held_for(10))
        ledger.later(10)
        assert ledger.one("capture", 5, hold_id="bid").error_code == "hold_expired"
        row = ledger.one("spend", 1)
        assert row.released_amount == 20 and row.balance_after == 34 and row.held_after is None
        assert ledger.one("capture", 5, hold_id="bid").error_code == "hold_expired"

    def test_blnk_182_a_refused_hold_cannot_be_captured(self) -> None:
        """(Blnk #182) A hold refused for want of funds does not exist: capturing it is
        refused as not found, and no money moves."""
        ledger = _funded()
        assert ledger.one("hold", 99, hold_id="big", **held_for(60)).status == "rejected"
        assert ledger.one("capture", 1, hold_id="big").error_code == "hold_not_found"
        assert ledger.account().balance == 35

    def test_a_hold_opened_as_a_lapsed_one_is_given_back_keeps_both_legs(self) -> None:
        """A hold of 20 opened in the transaction that gives back a lapsed hold of 20: the
        holds account moves in and out in two legs (netted, the transaction would have no
        system leg at all), and the store takes it."""
        ledger = _funded()
        ledger.one("hold", 20, hold_id="first", **held_for(1))
        ledger.later(2)
        row = ledger.one("hold", 20, hold_id="second", **held_for(60))
        assert _legs(row) == [("user", 0), ("holds", 20), ("holds", -20)]
        assert ledger.account().held == 20

    def test_an_expire_gives_lapsed_holds_back(self) -> None:
        """The sweep's expire command gives back a lapsed hold of an idle wallet (amount 0:
        no lot was booked out), and the next finds nothing."""
        ledger = _funded()
        ledger.one("hold", 20, hold_id="h", **held_for(1))
        ledger.later(2)
        row = ledger.one("expire")
        assert (row.status, row.amount, row.released_amount) == ("accepted", 0, 20)
        assert _legs(row) == [("user", 20), ("holds", -20)]
        assert ledger.one("expire").error_code == "nothing_to_expire"

    def test_a_held_piece_of_an_expired_lot_is_booked_out_when_given_back(self) -> None:
        """A bonus lot that expires while held: the release gives it back and books it out
        as expired in the same transaction; the lots still make up the balance."""
        ledger = Ledger()
        expires_at = datetime.fromtimestamp(ledger.now_ms / 1000 + 5, UTC)
        ledger.one("bonus", 10, expires_at=expires_at)
        ledger.one("top_up", 3)
        ledger.one("hold", 13, hold_id="h", **held_for(60))
        ledger.later(6)
        row = ledger.one("release", hold_id="h")
        assert (row.expired_amount, row.balance_after, row.released_amount) == (10, 3, None)
        assert _legs(row) == [("user", 3), ("holds", -13), ("expired", 10)]
        ledger.account().check()
        assert ledger.one("top_up", 1).expired_amount is None

    def test_a_hold_named_like_another_holds_default_name_is_refused(self) -> None:
        """A hold without a name is named by its transaction id: if a client used that name
        for a hold before, the hold is refused (hold_id_taken), not written twice."""
        ledger = _funded()
        taken = str(transaction_id_for("u", "later"))
        ledger.one("hold", 1, hold_id=taken, **held_for(60))
        ledger.one("release", hold_id=taken)
        row = ledger.one("hold", 1, key="later", **held_for(60))
        assert row.error_code == "hold_id_taken"
