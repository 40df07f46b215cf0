"""Lots: what a wallet's balance is made of, and the order a spend takes from them. Pure.

Every accepted credit opens a lot named by its transaction id: a `top_up` opens a paid lot, a
`bonus` a free one. A spend takes from the open lots in its asset's spend order and records
what it took from which lot, so finance can tell paid currency consumed (revenue) from free
currency given away, and a reversal can later give back to exactly those lots.

Why lots and not two counters (paid, free): a store refund names one purchase, and what is
left of that purchase is a fact about its lot, not about the wallet's paid total.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

# An account's open lots are loaded, sorted and written with it; a wallet fed credits that
# are never spent must not grow without bound (a credit past it is refused: too_many_lots).
LOTS_OPEN_MAX = 1_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(at: datetime) -> int:
    """A time as whole milliseconds since the epoch (integer arithmetic: no float rounding)."""
    return (at - _EPOCH) // _MS


def at_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MS


class SpendOrder(StrEnum):
    """Which lots a spend takes first (per asset, in the asset catalogue)."""

    FREE_FIRST = "free_first"  # give free currency away before paid: the players' usual deal
    PAID_FIRST = "paid_first"  # recognise revenue first
    EXPIRING_FIRST = "expiring_first"  # the soonest to expire first, whatever their origin


class Lot(NamedTuple):
    """An open lot: what is left of one credit."""

    lot_id: uuid.UUID  # the crediting transaction's id
    paid: bool
    remaining: int  # > 0 while open
    seq: int  # the account version that opened it: a total order among the account's lots
    expires_ms: int | None = None  # when it stops being spendable (epoch ms); None: never


class Holding(NamedTuple):
    """One asset of a wallet as a balance read shows it."""

    available: int  # the user account's balance: what a spend or hold may take
    paid: int  # the paid part of what is available; the rest is free
    held: int = 0  # kept aside by open holds (counted in the total, not available)
    debt: int = 0  # owed for reversed credits already spent

    @property
    def total(self) -> int:
        return self.available + self.held

    def document(self) -> dict[str, int]:
        return {"paid": self.paid, "free": self.available - self.paid, "held": self.held,
                "available": self.available, "debt": self.debt}  # fmt: skip


class Piece(NamedTuple):
    """What one spend took from one lot (or an expiry booked out of it)."""

    lot_id: uuid.UUID
    paid: bool
    amount: int
    seq: int
    expires_ms: int | None
    left: int  # what the lot holds after it (0: the lot is used up, or booked out)


def due(
    lots: tuple[Lot, ...], due_ms: int | None, now_ms: int
) -> tuple[tuple[Piece, ...], tuple[Lot, ...]]:
    """The lots whose expiry has come by `now_ms`, whole, and the lots still open. `due_ms`
    is the soonest expiry among the lots (see next_due_ms): O(1) when nothing is due."""
    if due_ms is None or due_ms > now_ms:
        return (), lots
    gone = tuple(
        Piece(lot.lot_id, lot.paid, lot.remaining, lot.seq, lot.expires_ms, 0)
        for lot in lots
        if lot.expires_ms is not None and lot.expires_ms <= now_ms
    )
    return gone, tuple(lot for lot in lots if lot.expires_ms is None or lot.expires_ms > now_ms)


def next_due_ms(lots: Sequence[Lot]) -> int | None:
    """The soonest expiry among the lots, if any lot expires."""
    return min((lot.expires_ms for lot in lots if lot.expires_ms is not None), default=None)


_NEVER_MS = 2**63  # sorts after every expiry


def _expiry(lot: Lot) -> int:
    return _NEVER_MS if lot.expires_ms is None else lot.expires_ms


# Within a kind, the lot expiring soonest goes first, then the oldest. The lot id last: lots
# received by transfer keep the sequence their sender's account gave them, which may equal
# one of the receiver's own (without it, two such lots would sort in whatever order they
# were loaded, and a warm and a cold writer could take from different lots).
_Key = tuple[bool, int, int, uuid.UUID] | tuple[int, int, uuid.UUID]
_KEYS: dict[SpendOrder, Callable[[Lot], _Key]] = {
    SpendOrder.FREE_FIRST: lambda lot: (lot.paid, _expiry(lot), lot.seq, lot.lot_id),
    SpendOrder.PAID_FIRST: lambda lot: (not lot.paid, _expiry(lot), lot.seq, lot.lot_id),
    SpendOrder.EXPIRING_FIRST: lambda lot: (_expiry(lot), lot.seq, lot.lot_id),
}


def in_order(lots: Sequence[Lot], order: SpendOrder) -> tuple[Lot, ...]:
    """The lots sorted in the order a spend takes them."""
    return tuple(sorted(lots, key=_KEYS[order]))


def with_lot(lots: tuple[Lot, ...], lot: Lot, order: SpendOrder) -> tuple[Lot, ...]:
    """`lots` (in `order`) with `lot` put in its place."""
    placed = list(lots)
    bisect.insort(placed, lot, key=_KEYS[order])
    return tuple(placed)


def take(lots: tuple[Lot, ...], amount: int) -> tuple[tuple[Piece, ...], tuple[Lot, ...]]:
    """Take `amount` from the front of `lots` (kept in spend order, see in_order): the pieces
    taken and the lots left open, still in order. Why kept in order: a spend then touches only
    the lots it takes from (usually one), however many the wallet holds.
    Precondition: the lots hold at least `amount`."""
    assert amount > 0, amount
    pieces: list[Piece] = []
    left = amount
    for i, lot in enumerate(lots):
        n = min(left, lot.remaining)
        rest = lot.remaining - n
        pieces.append(Piece(lot.lot_id, lot.paid, n, lot.seq, lot.expires_ms, rest))
        left -= n
        if not left:
            if rest == 0:
                return tuple(pieces), lots[i + 1 :]
            # Built whole, not by _replace: every spend comes here, and _replace costs
            # several times as much.
            kept = Lot(lot.lot_id, lot.paid, rest, lot.seq, lot.expires_ms)
            return tuple(pieces), (kept, *lots[i + 1 :])
    raise AssertionError(f"lots hold less than {amount}")


def paid_part(pieces: Sequence[Piece]) -> int:
    return sum(p.amount for p in pieces if p.paid)


def pieces_total(pieces: Sequence[Piece]) -> int:
    return sum(p.amount for p in pieces)


def total(lots: Sequence[Lot]) -> int:
    return sum(lot.remaining for lot in lots)


def paid_total(lots: Sequence[Lot]) -> int:
    return sum(lot.remaining for lot in lots if lot.paid)


def give_back(
    lots: tuple[Lot, ...], pieces: Sequence[Piece], order: SpendOrder
) -> tuple[tuple[Lot, ...], tuple[Lot, ...]]:
    """`lots` (in `order`) with each piece given back to the lot it came from, reopened if it
    was used up meanwhile (a piece carries its lot's origin: paid, seq, expiry); and the lots
    given back to, as they are after it. For holds resolved and spends reversed: rare, so a
    scan per piece is fine."""
    grown: dict[uuid.UUID, Lot] = {}
    for piece in pieces:
        lot = grown.get(piece.lot_id) or next((x for x in lots if x.lot_id == piece.lot_id), None)
        if lot is None:
            lot = Lot(piece.lot_id, piece.paid, 0, piece.seq, piece.expires_ms)
        grown[piece.lot_id] = lot._replace(remaining=lot.remaining + piece.amount)
    kept = [lot for lot in lots if lot.lot_id not in grown]
    restored = tuple(grown.values())
    return in_order((*kept, *restored), order), restored


def split(pieces: Sequence[Piece], amount: int) -> tuple[tuple[Piece, ...], tuple[Piece, ...]]:
    """The first `amount` of the pieces, and the rest (a capture of part of a hold)."""
    assert 0 <= amount <= pieces_total(pieces), (amount, pieces)
    front: list[Piece] = []
    rest: list[Piece] = []
    left = amount
    for piece in pieces:
        n = min(left, piece.amount)
        left -= n
        if n:
            front.append(piece._replace(amount=n))
        if piece.amount - n:
            rest.append(piece._replace(amount=piece.amount - n))
    return tuple(front), tuple(rest)


def pieces_document(pieces: Sequence[Piece]) -> list[list[object]]:
    """Pieces whole, as a hold keeps them: [[lot id, paid, amount, seq, expires ms], ...]."""
    return [[str(p.lot_id), p.paid, p.amount, p.seq, p.expires_ms] for p in pieces]


def pieces_of(document: Sequence[Sequence[Any]]) -> tuple[Piece, ...]:
    """Pieces from pieces_document (what their lots hold after is not kept: 0)."""
    return tuple(Piece(uuid.UUID(i), paid, n, seq, ms, 0) for i, paid, n, seq, ms in document)
