"""Lots: what a wallet's balance is made of, and the order a spend takes from them. Pure.

Every accepted credit opens a lot named by its transaction id: a `top_up` opens a paid lot, a
`bonus` a free one. A spend takes from the open lots in its asset's spend order and records
what it took from which lot, so finance can tell paid currency consumed (revenue) from free
currency given away, and a reversal can later give back to exactly those lots.

Why lots and not two counters (paid, free): a store refund names one purchase, and what is
left of that purchase is a fact about its lot, not about the wallet's paid total.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

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

    balance: int
    paid: int  # the paid part of the balance; the rest is free

    def document(self) -> dict[str, int]:
        return {"paid": self.paid, "free": self.balance - self.paid}


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


# Within a kind, the lot expiring soonest goes first, then the oldest.
_KEYS: dict[SpendOrder, Callable[[Lot], tuple[bool, int, int] | tuple[int, int]]] = {
    SpendOrder.FREE_FIRST: lambda lot: (lot.paid, _expiry(lot), lot.seq),
    SpendOrder.PAID_FIRST: lambda lot: (not lot.paid, _expiry(lot), lot.seq),
    SpendOrder.EXPIRING_FIRST: lambda lot: (_expiry(lot), lot.seq),
}


def _walk(lots: tuple[Lot, ...], order: SpendOrder, expiring: bool, mixed: bool) -> Iterable[int]:
    """The lots' indices in spend order, lazily. Lots are kept in the order they were opened,
    so without expiries no sort is needed: a spend usually stops at the first lot or two, and
    a wallet of one kind only (not `mixed`) is walked as it is."""
    if expiring:
        return sorted(range(len(lots)), key=lambda i: _KEYS[order](lots[i]))
    if order is SpendOrder.EXPIRING_FIRST or not mixed:
        return range(len(lots))
    first = order is SpendOrder.PAID_FIRST  # the `paid` value taken first
    return itertools.chain(
        (i for i, lot in enumerate(lots) if lot.paid is first),
        (i for i, lot in enumerate(lots) if lot.paid is not first),
    )


def take(
    lots: tuple[Lot, ...], amount: int, order: SpendOrder, expiring: bool, mixed: bool = True
) -> tuple[tuple[Piece, ...], tuple[Lot, ...]]:
    """Take `amount` from the lots in `order` (`expiring`: some lot has an expiry; `mixed`:
    the lots hold both paid and free currency): the pieces taken and the lots left open, in
    the order given. Precondition: the lots hold at least `amount`."""
    assert amount > 0, amount
    pieces: list[Piece] = []
    after = list(lots)
    used_up: list[int] = []
    left = amount
    for i in _walk(lots, order, expiring, mixed):
        lot = lots[i]
        n = min(left, lot.remaining)
        rest = lot.remaining - n
        pieces.append(Piece(lot.lot_id, lot.paid, n, lot.seq, lot.expires_ms, rest))
        if rest:
            after[i] = lot._replace(remaining=rest)
        else:
            used_up.append(i)
        left -= n
        if not left:
            break
    assert left == 0, f"lots hold less than {amount}"
    for i in reversed(sorted(used_up)):
        del after[i]
    return tuple(pieces), tuple(after)


def lot_order(lot: Lot) -> tuple[int, uuid.UUID]:
    """The order an account keeps its open lots in: as they were opened."""
    return lot.seq, lot.lot_id


def paid_part(pieces: Sequence[Piece]) -> int:
    return sum(p.amount for p in pieces if p.paid)


def pieces_total(pieces: Sequence[Piece]) -> int:
    return sum(p.amount for p in pieces)


def total(lots: Sequence[Lot]) -> int:
    return sum(lot.remaining for lot in lots)


def paid_total(lots: Sequence[Lot]) -> int:
    return sum(lot.remaining for lot in lots if lot.paid)
