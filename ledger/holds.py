"""Holds: money set aside now, captured (spent) or released later, or given back when the hold
expires. Pure.

A hold takes its amount from the wallet's lots in the asset's spend order, like a spend, and
moves it to the `holds` escrow account: it leaves the balance (what is available) and stays in
the wallet's total. Its pieces remember the lots they came from, so a release (or the rest of
a partial capture, or an expiry) gives each back to its own lot, paid or free, with its
expiry. Each hold is resolved exactly once; a second resolution is refused with a code that
says how the first went (Blnk's void-twice and capture-after-expiry bugs are tests here).
"""

from __future__ import annotations

import uuid

from ledger import lots
from ledger.account import (
    HOLDS_OPEN_MAX,
    Accepted,
    AccountState,
    Hold,
    References,
    Rejected,
)
from ledger.lots import Lot
from schemas.commands import Command
from schemas.replies import ErrorCode

_ALREADY = {
    "captured": ErrorCode.HOLD_ALREADY_CAPTURED,
    "released": ErrorCode.HOLD_ALREADY_RELEASED,
    "expired": ErrorCode.HOLD_EXPIRED,
}


def lapse(
    account: AccountState, now_ms: int
) -> tuple[AccountState, tuple[Hold, ...], tuple[Lot, ...]]:
    """The account once the holds whose expiry has come are given back to its lots (same
    version: the transaction that books it is the command's own); those holds; the lots
    given back to."""
    if not account.holds or all(h.expires_ms > now_ms for h in account.holds):
        return account, (), ()
    lapsed = tuple(h for h in account.holds if h.expires_ms <= now_ms)
    kept = tuple(h for h in account.holds if h.expires_ms > now_ms)
    back = sum(h.amount for h in lapsed)
    account, restored = _given_back(account, [p for h in lapsed for p in h.pieces])
    return account._replace(holds=kept, held=account.held - back), lapsed, restored


def _given_back(
    account: AccountState, pieces: list[lots.Piece]
) -> tuple[AccountState, tuple[Lot, ...]]:
    assert account.order is not None
    placed, restored = lots.give_back(account.lots, pieces, account.order)
    state = account._replace(
        balance=account.balance + lots.pieces_total(pieces),
        paid=account.paid + lots.paid_part(pieces),
        lots=placed,
        due_ms=lots.next_due_ms(placed),
    )
    return state, restored


def hold(
    command: Command,
    account: AccountState,
    tx_id: uuid.UUID,
    now_ms: int,
    refs: References,
    lapsed: tuple[Hold, ...],
) -> Accepted | Rejected:
    """Set `amount` aside (`account` is without its expired lots and holds already)."""
    amount, seconds = command.amount, command.expires_in_s
    assert amount is not None and seconds is not None
    hold_id = command.hold_id or str(tx_id)
    taken = (*(h.hold_id for h in account.holds), *(h.hold_id for h in lapsed))
    if hold_id in taken or (command.user_id, command.asset, hold_id) in refs.holds:
        return Rejected(ErrorCode.HOLD_ID_TAKEN, f"a hold named {hold_id} exists already")
    if account.debt:
        return in_debt(account, command.asset)
    if len(account.holds) >= HOLDS_OPEN_MAX:
        message = f"the wallet has {HOLDS_OPEN_MAX} open holds of {command.asset}"
        return Rejected(ErrorCode.TOO_MANY_HOLDS, message)
    if amount > account.balance:
        return insufficient(account, command.asset, amount)
    pieces, left = lots.take(account.lots, amount)
    opened = Hold(hold_id, tx_id, amount, pieces, now_ms + seconds * 1000)
    after = account._replace(
        balance=account.balance - amount, version=account.version + 1,
        paid=account.paid - lots.paid_part(pieces), lots=left, due_ms=lots.next_due_ms(left),
        holds=(*account.holds, opened), held=account.held + amount,
    )  # fmt: skip
    return Accepted(after, 0, (), amount=amount, pieces=pieces, hold=opened)


def resolve(
    command: Command, account: AccountState, refs: References, lapsed: tuple[Hold, ...]
) -> Accepted | Rejected:
    """A capture (of all, or `amount` of, what the hold keeps; the rest goes back) or a
    release of the hold the command names."""
    hold_id = command.hold_id
    assert hold_id is not None
    found = next((h for h in account.holds if h.hold_id == hold_id), None)
    if found is None:
        return _not_open(command, hold_id, refs, lapsed)
    capture = command.amount if command.type == "capture" else 0
    if capture is None:
        capture = found.amount
    if capture > found.amount:
        return Rejected(ErrorCode.CAPTURE_EXCEEDS_HOLD,
                        f"hold {hold_id} keeps {found.amount}, less than {capture}")  # fmt: skip
    taken, rest = lots.split(found.pieces, capture)
    state = account._replace(holds=tuple(h for h in account.holds if h is not found),
                             held=account.held - found.amount)  # fmt: skip
    state, restored = _given_back(state, list(rest))
    after = state._replace(version=account.version + 1)
    if command.type == "release":
        return Accepted(after, 0, (), amount=found.amount, restored=restored, returned=rest,
                        resolved=((found, "released"),))  # fmt: skip
    return Accepted(after, 0, (), lots.paid_part(taken), taken, False, amount=capture,
                    restored=restored, returned=rest, released=found.amount - capture,
                    resolved=((found, "captured"),))  # fmt: skip


def _not_open(
    command: Command, hold_id: str, refs: References, lapsed: tuple[Hold, ...]
) -> Rejected:
    """Why the named hold cannot be resolved: it expired (just now, or before), it was
    resolved already, or there is none."""
    if any(h.hold_id == hold_id for h in lapsed):
        status: str | None = "expired"
    else:
        status = refs.holds.get((command.user_id, command.asset, hold_id))
    if status is None:
        return Rejected(ErrorCode.HOLD_NOT_FOUND, f"no hold {hold_id} of {command.asset}")
    return Rejected(_ALREADY[status], f"hold {hold_id} was {status} already")


def in_debt(account: AccountState, asset: str) -> Rejected:
    return Rejected(ErrorCode.IN_DEBT,
                    f"the wallet owes {account.debt} {asset}: credits pay it first")  # fmt: skip


def insufficient(account: AccountState, asset: str, amount: int) -> Rejected:
    message = f"available balance {account.balance} {asset} is less than {amount}"
    return Rejected(ErrorCode.INSUFFICIENT_FUNDS, message)
