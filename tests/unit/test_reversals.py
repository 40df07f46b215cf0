"""Reversals: spends and captures given back to their lots, credits taken back into debt."""

from __future__ import annotations

import uuid

from ledger.account import EMPTY_ACCOUNT, Asset, References, Rejected, Target
from ledger.decide import decide
from ledger.plan import ProcessedRow, transaction_id_for
from ledger.reversals import legacy_lot_id, target_pieces
from tests.integration.helpers import command
from tests.unit.ledger_harness import START_MS, Ledger, at, held_for, tx


def _reverse(ledger: Ledger, row: ProcessedRow, user: str = "u") -> ProcessedRow:
    [found] = ledger.send(
        command("reverse", user, None, transaction_id=tx(row), reason="store refund")
    )
    return found


class TestReverseASpend:
    def test_a_reversed_spend_goes_back_to_the_lots_it_took(self) -> None:
        """A spend of 8 (5 free, 3 paid) reversed: the wallet is as before, its lots too,
        revenue and free_spent give back what they took."""
        ledger = Ledger()
        ledger.one("top_up", 10)
        ledger.one("bonus", 5)
        before = ledger.account()
        spend = ledger.one("spend", 8)
        row = _reverse(ledger, spend)
        after = ledger.account()
        assert (row.status, row.amount, row.consumed_paid, row.reversed_type) == (
            "accepted", 8, 3, "spend")  # fmt: skip
        assert (after.balance, after.paid) == (before.balance, before.paid)
        assert sorted(lot.remaining for lot in after.lots) == [5, 10]

    def test_a_reversed_capture_goes_back_too(self) -> None:
        """A captured hold reversed: the captured money is back in the wallet."""
        ledger = Ledger()
        ledger.one("top_up", 10)
        ledger.one("hold", 6, hold_id="h", **held_for(60))
        capture = ledger.one("capture", 4, hold_id="h")
        assert _reverse(ledger, capture).balance_after == 10

    def test_a_transaction_is_reversed_once(self) -> None:
        """A second reverse of one transaction is refused, in a later batch or the same."""
        ledger = Ledger()
        ledger.one("top_up", 10)
        spend = ledger.one("spend", 2)
        assert _reverse(ledger, spend).status == "accepted"
        assert _reverse(ledger, spend).error_code == "already_reversed"
        spent = ledger.one("spend", 1)
        both = ledger.send(*(command("reverse", "u", None, transaction_id=tx(spent),
                                     reason="twice") for _ in range(2)))  # fmt: skip
        assert [r.error_code for r in both] == [None, "already_reversed"]

    def test_a_spend_reversed_in_its_own_batch(self) -> None:
        """A reverse in the batch of the spend it names finds it."""
        ledger = Ledger()
        ledger.one("top_up", 10)
        spend = command("spend", "u", 4, key="s1")
        reverse = command("reverse", "u", None, transaction_id=transaction_id_for("u", "s1"),
                          reason="same batch")  # fmt: skip
        rows = ledger.send(spend, reverse)
        assert [r.status for r in rows] == ["accepted", "accepted"] and rows[1].balance_after == 10


class TestReverseACredit:
    def test_a_refund_of_a_partly_spent_top_up_leaves_debt_the_next_top_up_pays(self) -> None:
        """Top-up 10, spend 7, refund the top-up: 3 taken back, 7 owed; spends are refused
        in debt; a top-up of 10 pays the 7 first and leaves 3."""
        ledger = Ledger()
        top_up = ledger.one("top_up", 10)
        ledger.one("spend", 7)
        row = _reverse(ledger, top_up)
        assert (row.balance_after, row.debt_after, row.debt_added) == (0, 7, 7)
        assert ledger.one("spend", 1).error_code == "in_debt"
        assert ledger.one("hold", 1, **held_for(60)).error_code == "in_debt"
        paid_back = ledger.one("top_up", 10)
        assert (paid_back.debt_paid, paid_back.debt_after, paid_back.balance_after) == (7, None, 3)
        assert ledger.one("spend", 3).status == "accepted"

    def test_an_unspent_bonus_is_taken_back_whole(self) -> None:
        """A bonus nothing was spent of is taken back without debt."""
        ledger = Ledger()
        ledger.one("top_up", 4)
        bonus = ledger.one("bonus", 6)
        row = _reverse(ledger, bonus)
        assert (row.balance_after, row.debt_after, row.paid_after) == (4, None, 4)

    def test_a_credit_that_paid_debt_owes_it_again_when_reversed(self) -> None:
        """A top-up that paid 7 of debt, reversed unspent: the 7 is owed again."""
        ledger = Ledger()
        first = ledger.one("top_up", 10)
        ledger.one("spend", 7)
        _reverse(ledger, first)
        second = ledger.one("top_up", 10)
        assert _reverse(ledger, second).debt_after == 7


class TestExpiredAndIndebted:
    def test_a_spend_reversed_after_its_lot_expired_is_booked_out_at_once(self) -> None:
        """A spend from an expiring lot, reversed after the expiry: the currency goes back to
        its lot and is booked out as expired in the same transaction."""
        ledger = Ledger()
        ledger.one("bonus", 10, expires_at=at(ledger, 5))
        spend = ledger.one("spend", 4)
        ledger.later(6)
        row = _reverse(ledger, spend)
        assert (row.status, row.balance_after, row.expired_amount) == ("accepted", 0, 10)
        ledger.account().check()

    def test_a_refund_of_an_expired_top_up_takes_it_back_from_expired(self) -> None:
        """A top-up that expired unspent, refunded: what expiry booked out comes back from
        the expired account; nothing is owed."""
        ledger = Ledger()
        top_up = ledger.one("top_up", 10, expires_at=at(ledger, 5))
        ledger.one("spend", 3)
        ledger.later(6)
        ledger.one("expire")
        row = _reverse(ledger, top_up)
        assert (row.unexpired_amount, row.debt_added, row.debt_after) == (7, 3, 3)

    def test_currency_given_back_pays_the_debt_first(self) -> None:
        """Top-up 100 held whole, the top-up refunded (100 owed, as the hold keeps it): the
        release gives the 100 back, and it pays the debt, as a credit would."""
        ledger = Ledger()
        top_up = ledger.one("top_up", 100)
        ledger.one("hold", 100, hold_id="h", **held_for(60))
        assert _reverse(ledger, top_up).debt_after == 100
        row = ledger.one("release", hold_id="h")
        assert (row.balance_after, row.debt_after, row.debt_paid) == (0, None, 100)
        assert row.lots_settled is not None
        ledger.account().check()

    def test_what_was_recorded_before_lots_is_not_reversed(self) -> None:
        """A spend or credit recorded before lots existed (its lots unknown) is refused as
        not reversible."""
        account = EMPTY_ACCOUNT._replace(balance=60, paid=60, version=2)
        for target in (Target("u", "GOLD", "spend", 40, None, (), False, True),
                       Target("u", "GOLD", "top_up", 60, None, (), False, True)):  # fmt: skip
            found = command("reverse", "u", None, transaction_id=uuid.UUID(int=7), reason="x")
            refs = References({}, {uuid.UUID(int=7): target})
            result = decide(found, account, {"GOLD": Asset()}, uuid.UUID(int=8),
                            START_MS, refs)  # fmt: skip
            assert isinstance(result, Rejected) and result.code == "not_reversible"


class TestNotReversed:
    def test_holds_releases_and_reversals_are_not_reversed(self) -> None:
        """Only spends, captures, top-ups and bonuses are reversed."""
        ledger = Ledger()
        ledger.one("top_up", 10)
        hold = ledger.one("hold", 1, **held_for(60))
        assert _reverse(ledger, hold).error_code == "not_reversible"

    def test_another_wallets_transaction_is_not_found(self) -> None:
        """A reverse naming another user's transaction, or none, is refused as not found."""
        ledger = Ledger()
        theirs = ledger.send(command("top_up", "v", 10))[0]
        assert _reverse(ledger, theirs).error_code == "transaction_not_found"
        missing = command("reverse", "u", None, transaction_id=uuid.uuid4(), reason="?")
        assert ledger.send(missing)[0].error_code == "transaction_not_found"


class TestTargetPieces:
    def test_a_legacy_lot_is_paid_or_free_as_its_id_says(self) -> None:
        """A piece of a lot no credit opened (migration 008's legacy lots) is given back
        paid when its id is the paid legacy lot's, with no expiry."""
        paid = legacy_lot_id(True, "u", "GOLD")
        free = legacy_lot_id(False, "u", "GOLD")
        pieces = target_pieces([[str(paid), 3], [str(free), 2]], {}, "u", "GOLD")
        given_back = [(p.paid, p.amount, p.expires_ms) for p in pieces]
        assert given_back == [(True, 3, None), (False, 2, None)]
