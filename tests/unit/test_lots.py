"""Lots and the order spends take them in (ledger.lots)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from ledger import lots
from ledger.decide import EMPTY_ACCOUNT, Accepted, decide
from ledger.lots import Lot, SpendOrder
from tests.integration.helpers import command

A = Lot(uuid.UUID(int=1), True, 10, 1)
B = Lot(uuid.UUID(int=2), False, 4, 2)
C = Lot(uuid.UUID(int=3), True, 6, 3)


class TestTake:
    def test_free_first_then_oldest_paid(self) -> None:
        """free_first takes the free lot whole, then the oldest paid lot; untouched lots
        stay in their order."""
        pieces, left = lots.take((A, B, C), 7, SpendOrder.FREE_FIRST)
        assert pieces == (lots.Piece(B.lot_id, False, 4), lots.Piece(A.lot_id, True, 3))
        assert left == (A._replace(remaining=7), C)

    def test_paid_first_and_oldest_first(self) -> None:
        """paid_first skips the free lot; expiring_first (no expiries yet) goes by age."""
        assert lots.take((A, B, C), 12, SpendOrder.PAID_FIRST)[1] == (B, C._replace(remaining=4))
        assert lots.take((A, B, C), 12, SpendOrder.EXPIRING_FIRST)[1] == (
            B._replace(remaining=2),
            C,
        )

    def test_taking_more_than_the_lots_hold_is_a_bug(self) -> None:
        """The caller checks the balance first; take() asserts it did."""
        try:
            lots.take((A,), 11, SpendOrder.FREE_FIRST)
        except AssertionError:
            return
        raise AssertionError("take() spent more than the lots hold")


_STEPS = st.lists(
    st.tuples(st.sampled_from(["top_up", "bonus", "spend"]), st.integers(1, 50)), max_size=60
)


class TestAnySequence:
    @given(steps=_STEPS, order=st.sampled_from(list(SpendOrder)))
    def test_lots_always_make_up_the_balance(
        self, steps: list[tuple[str, int]], order: SpendOrder
    ) -> None:
        """Any sequence of credits and spends under any order: the lots sum to the balance,
        their paid part to `paid`, each spend's pieces to its amount, and the paid part
        consumed equals the paid lots' loss."""
        account, assets = EMPTY_ACCOUNT, {"GOLD": order}
        for i, (kind, amount) in enumerate(steps):
            result = decide(command(kind, "u", amount), account, assets, uuid.UUID(int=i + 10))
            if not isinstance(result, Accepted):
                assert kind == "spend" and amount > account.balance
                continue
            result.account.check()
            if kind == "spend":
                assert sum(p.amount for p in result.pieces) == amount
                assert result.consumed_paid == account.paid - result.account.paid
                assert sum(n for _, n in result.legs) == amount
            account = result.account

    @given(steps=_STEPS)
    def test_free_first_never_spends_paid_while_free_is_left(
        self, steps: list[tuple[str, int]]
    ) -> None:
        """Under free_first a spend takes paid currency only once the free lots are empty."""
        account, assets = EMPTY_ACCOUNT, {"GOLD": SpendOrder.FREE_FIRST}
        for i, (kind, amount) in enumerate(steps):
            result = decide(command(kind, "u", amount), account, assets, uuid.UUID(int=i + 10))
            if isinstance(result, Accepted):
                free_before = account.balance - account.paid
                if kind == "spend":
                    assert result.consumed_paid == max(0, amount - free_before)
                account = result.account
