"""Lots and the order spends take them in (ledger.lots)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import lots
from ledger.account import EMPTY_ACCOUNT, Accepted, Asset
from ledger.decide import decide
from ledger.lots import Lot, SpendOrder
from schemas.commands import Command
from tests.integration.helpers import command

A = Lot(uuid.UUID(int=1), True, 10, 1)
B = Lot(uuid.UUID(int=2), False, 4, 2)
C = Lot(uuid.UUID(int=3), True, 6, 3)


FREE = SpendOrder.FREE_FIRST


class TestTake:
    def test_free_first_then_oldest_paid(self) -> None:
        """In free_first order the free lot comes first, then the paid ones by age; a spend
        takes from the front and leaves the rest in order."""
        ordered = lots.in_order((A, B, C), FREE)
        assert ordered == (B, A, C)
        pieces, left = lots.take(ordered, 7)
        assert pieces == (lots.Piece(B.lot_id, False, 4, 2, None, 0),
                          lots.Piece(A.lot_id, True, 3, 1, None, 7))  # fmt: skip
        assert left == (A._replace(remaining=7), C)

    def test_paid_first_and_oldest_first(self) -> None:
        """paid_first puts the free lot last; expiring_first (no expiries) goes by age."""
        paid_first = lots.in_order((A, B, C), SpendOrder.PAID_FIRST)
        assert lots.take(paid_first, 12)[1] == (C._replace(remaining=4), B)
        oldest_first = lots.in_order((A, B, C), SpendOrder.EXPIRING_FIRST)
        assert lots.take(oldest_first, 12)[1] == (B._replace(remaining=2), C)

    def test_expiring_lots_first_within_a_kind(self) -> None:
        """Within free or paid, the lot expiring soonest goes first; never-expiring last."""
        soon = Lot(uuid.UUID(int=4), True, 1, 4, 5_000)
        later = Lot(uuid.UUID(int=5), True, 1, 5, 9_000)
        assert lots.in_order((A, later, B, soon), FREE) == (B, soon, later, A)

    def test_a_new_lot_takes_its_place(self) -> None:
        """A credit's lot is put where the order wants it, the others left as they are."""
        ordered = lots.in_order((A, C), FREE)
        free = Lot(uuid.UUID(int=6), False, 2, 6)
        assert lots.with_lot(ordered, free, FREE) == (free, A, C)
        paid = Lot(uuid.UUID(int=7), True, 2, 7)
        assert lots.with_lot(ordered, paid, FREE) == (A, C, paid)

    def test_taking_more_than_the_lots_hold_is_a_bug(self) -> None:
        """The caller checks the balance first; take() asserts it did."""
        with pytest.raises(AssertionError):
            lots.take((A,), 11)


# (kind, amount, milliseconds the clock moves first, the credit's lifetime in ms or None)
_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["top_up", "bonus", "spend", "expire"]), st.integers(1, 50),
        st.integers(0, 30), st.none() | st.integers(1, 60),
    ),
    max_size=60,
)  # fmt: skip
_START_MS = 1_800_000_000_000


def _command(kind: str, amount: int, now_ms: int, life_ms: int | None) -> Command:
    found = command(kind, "u", None if kind == "expire" else amount)
    if life_ms is not None and kind in ("top_up", "bonus"):
        return found.model_copy(update={"expires_at": lots.at_ms(now_ms + life_ms)})
    return found


class TestAnySequence:
    @given(steps=_STEPS, order=st.sampled_from(list(SpendOrder)))
    def test_lots_always_make_up_the_balance(
        self, steps: list[tuple[str, int, int, int | None]], order: SpendOrder
    ) -> None:
        """Any sequence of credits (some expiring), spends, expires and clock steps under any
        order: the lots sum to the balance and their paid part to `paid`; a spend's pieces
        sum to its amount and none comes from an expired lot; the legs balance the user's;
        nothing expired stays open past a transaction; every credit is spent, expired or left."""
        account, assets, now_ms = EMPTY_ACCOUNT, {"GOLD": Asset(order)}, _START_MS
        credited = spent = expired = 0
        for i, (kind, amount, step_ms, life_ms) in enumerate(steps):
            now_ms += step_ms
            found = _command(kind, amount, now_ms, life_ms)
            result = decide(found, account, assets, uuid.UUID(int=i + 10), now_ms)
            if not isinstance(result, Accepted):
                continue
            result.account.check()
            assert result.user_amount == -sum(n for _, n in result.legs)
            assert all(lot.expires_ms is None or lot.expires_ms > now_ms
                       for lot in result.account.lots)  # fmt: skip
            assert all(p.expires_ms is None or p.expires_ms > now_ms for p in result.pieces)
            if kind == "spend":
                assert sum(p.amount for p in result.pieces) == amount
                spent += amount
            credited += amount if kind in ("top_up", "bonus") else 0
            expired += lots.pieces_total(result.expired)
            account = result.account
        assert credited == spent + expired + account.balance

    @given(steps=_STEPS)
    def test_free_first_never_spends_paid_while_free_is_left(
        self, steps: list[tuple[str, int, int, int | None]]
    ) -> None:
        """Under free_first a spend takes paid currency only once the spendable free lots
        are empty."""
        account, assets, now_ms = EMPTY_ACCOUNT, {"GOLD": Asset()}, _START_MS
        for i, (kind, amount, step_ms, life_ms) in enumerate(steps):
            now_ms += step_ms
            found = _command(kind, amount, now_ms, life_ms)
            result = decide(found, account, assets, uuid.UUID(int=i + 10), now_ms)
            if isinstance(result, Accepted):
                _, live = lots.due(account.lots, account.due_ms, now_ms)
                free_before = sum(lot.remaining for lot in live if not lot.paid)
                if kind == "spend":
                    assert result.consumed_paid == max(0, amount - free_before)
                account = result.account
