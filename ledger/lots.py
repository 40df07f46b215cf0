"""Lots: what a wallet's balance is made of, and the order a spend takes from them. Pure.

Every accepted credit opens a lot named by its transaction id: a `top_up` opens a paid lot, a
`bonus` a free one. A spend takes from the open lots in its asset's spend order and records
what it took from which lot, so finance can tell paid currency consumed (revenue) from free
currency given away, and a reversal can later give back to exactly those lots.

Why lots and not two counters (paid, free): a store refund names one purchase, and what is
left of that purchase is a fact about its lot, not about the wallet's paid total.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import NamedTuple

# An account's open lots are loaded, sorted and written with it; a wallet fed credits that
# are never spent must not grow without bound (a credit past it is refused: too_many_lots).
LOTS_OPEN_MAX = 1_000


class SpendOrder(StrEnum):
    """Which lots a spend takes first (per asset, in the asset catalogue)."""

    FREE_FIRST = "free_first"  # give free currency away before paid: the players' usual deal
    PAID_FIRST = "paid_first"  # recognise revenue first
    # Lots that expire soonest first, whatever their origin. Lots carry no expiry yet, so
    # today this is the oldest lot first.
    EXPIRING_FIRST = "expiring_first"


class Lot(NamedTuple):
    """An open lot: what is left of one credit."""

    lot_id: uuid.UUID  # the crediting transaction's id
    paid: bool
    remaining: int  # > 0 while open
    seq: int  # the account version that opened it: a total order among the account's lots


class Holding(NamedTuple):
    """One asset of a wallet as a balance read shows it."""

    balance: int
    paid: int  # the paid part of the balance; the rest is free

    def document(self) -> dict[str, int]:
        return {"paid": self.paid, "free": self.balance - self.paid}


class Piece(NamedTuple):
    """What one spend took from one lot."""

    lot_id: uuid.UUID
    paid: bool
    amount: int


_KEYS: dict[SpendOrder, Callable[[Lot], tuple[bool, int] | int]] = {
    SpendOrder.FREE_FIRST: lambda lot: (lot.paid, lot.seq),
    SpendOrder.PAID_FIRST: lambda lot: (not lot.paid, lot.seq),
    SpendOrder.EXPIRING_FIRST: lambda lot: lot.seq,
}


def take(
    lots: tuple[Lot, ...], amount: int, order: SpendOrder
) -> tuple[tuple[Piece, ...], tuple[Lot, ...]]:
    """Take `amount` from the lots in `order`: the pieces taken and the lots left open (in
    the same order as given). Precondition: the lots hold at least `amount`."""
    assert amount > 0, amount
    ordered = lots if len(lots) < 2 else sorted(lots, key=_KEYS[order])
    pieces: list[Piece] = []
    changed: dict[uuid.UUID, int] = {}
    left = amount
    for lot in ordered:
        if left == 0:
            break
        n = min(left, lot.remaining)
        pieces.append(Piece(lot.lot_id, lot.paid, n))
        changed[lot.lot_id] = lot.remaining - n
        left -= n
    assert left == 0, f"lots hold less than {amount}"
    after = tuple(
        lot._replace(remaining=changed[lot.lot_id]) if lot.lot_id in changed else lot
        for lot in lots
        if changed.get(lot.lot_id, lot.remaining) > 0
    )
    return tuple(pieces), after


def lot_order(lot: Lot) -> tuple[int, uuid.UUID]:
    """The order an account keeps its open lots in: as they were opened."""
    return lot.seq, lot.lot_id


def paid_part(pieces: Sequence[Piece]) -> int:
    return sum(p.amount for p in pieces if p.paid)


def total(lots: Sequence[Lot]) -> int:
    return sum(lot.remaining for lot in lots)


def paid_total(lots: Sequence[Lot]) -> int:
    return sum(lot.remaining for lot in lots if lot.paid)
