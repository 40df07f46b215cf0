"""Reversals: a store refund, a chargeback, a support correction. Pure.

A reverse undoes one accepted transaction of the same wallet, once. A spend or capture gives
its currency back to the lots it took from (paid stays paid, an expiry stays with its lot).
A top-up or bonus is taken back from what is left of its lot, and what expiry booked out of
it comes back from `expired`; what the player had spent of it cannot be taken from their
balance without taking other purchases' currency, so it becomes the wallet's debt, booked
against the `receivable` system account: the balance never goes negative, later credits (and
currency given back: a release, a reversed spend) pay the debt first, and spends and holds
are refused while it is open. Transactions recorded before lots existed are not reversed:
which lots they moved is not known.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ledger import lots
from ledger.account import BALANCE_MAX, Accepted, AccountState, References, Rejected, Target
from ledger.legs import CREDIT_TYPES, SPENT_TYPES
from schemas.commands import Command
from schemas.replies import ErrorCode


def reverse(command: Command, account: AccountState, refs: References) -> Accepted | Rejected:
    """Undo the transaction the command names (`account` is without its expired lots and
    lapsed holds already)."""
    target_id = command.transaction_id
    assert target_id is not None
    target = refs.targets.get(target_id)
    if target is None or (target.user_id, target.asset) != (command.user_id, command.asset):
        return Rejected(ErrorCode.TRANSACTION_NOT_FOUND,
                        f"no accepted transaction {target_id} of this wallet's "
                        f"{command.asset}")  # fmt: skip
    if target.reversed:
        return Rejected(ErrorCode.ALREADY_REVERSED, f"{target_id} was reversed already")
    if target.before_lots or (target.type in SPENT_TYPES and not target.pieces):
        return Rejected(ErrorCode.NOT_REVERSIBLE,
                        f"{target_id} was recorded before lots existed: which lots it moved is "
                        "not known")  # fmt: skip
    if target.type in SPENT_TYPES:
        if account.total() + target.amount > BALANCE_MAX:
            return Rejected(ErrorCode.BALANCE_LIMIT_EXCEEDED,
                            f"a balance may not exceed {BALANCE_MAX} {command.asset}")  # fmt: skip
        return give_back(account, target.pieces, target.consumed_paid, target.type)
    if target.type in CREDIT_TYPES:
        return _take_back(account, target, target_id)
    return Rejected(ErrorCode.NOT_REVERSIBLE,
                    f"a {target.type} is not reversed: spends, captures, top-ups and bonuses "
                    "are")  # fmt: skip


def give_back(
    account: AccountState,
    pieces: tuple[lots.Piece, ...],
    consumed_paid: int | None,
    reversed_type: str | None = None,
) -> Accepted:
    """`pieces` given back to the lots they came from (a reversed spend: `reversed_type`), or
    handed to them (a transfer's credit or refund)."""
    assert account.order is not None
    amount = lots.pieces_total(pieces)
    placed, restored = lots.give_back(account.lots, pieces, account.order)
    after = account._replace(
        balance=account.balance + amount, version=account.version + 1,
        paid=account.paid + lots.paid_part(pieces), lots=placed, due_ms=lots.next_due_ms(placed),
    )  # fmt: skip
    return Accepted(after, 0, (), consumed_paid, amount=amount, restored=restored,
                    returned=pieces, reversed_type=reversed_type)  # fmt: skip


def _take_back(account: AccountState, target: Target, lot_id: uuid.UUID) -> Accepted | Rejected:
    """What is left of the credit's lot leaves the wallet, what expiry booked out of it comes
    back from `expired`; the rest, spent, becomes debt."""
    amount = target.amount
    lot = next((x for x in account.lots if x.lot_id == lot_id), None)
    left = 0 if lot is None else lot.remaining
    assert left <= amount, (lot, amount)  # a lot never holds more than its credit brought
    unexpired = min(target.expired, amount - left)
    owed = amount - left - unexpired
    if account.debt + owed > BALANCE_MAX:  # reversals of credits that paid debt
        return Rejected(ErrorCode.BALANCE_LIMIT_EXCEEDED,
                        f"a debt may not exceed {BALANCE_MAX}")  # fmt: skip
    kept = tuple(x for x in account.lots if x is not lot)
    paid_gone = left if lot is not None and lot.paid else 0
    after = account._replace(
        balance=account.balance - left, version=account.version + 1,
        paid=account.paid - paid_gone, lots=kept, due_ms=lots.next_due_ms(kept),
        debt=account.debt + owed,
    )  # fmt: skip
    pieces = () if lot is None else (lots.Piece(lot.lot_id, lot.paid, left, lot.seq,
                                                lot.expires_ms, 0),)  # fmt: skip
    return Accepted(after, 0, (), pieces=pieces, amount=amount, debt_added=owed,
                    unexpired=unexpired, reversed_type=target.type)  # fmt: skip


class Origin(NamedTuple):
    """What the crediting record of a lot says of it: whether the lot is paid currency, the
    account version it opened at and its expiry."""

    paid: bool
    version: int
    expires_ms: int | None


def opens_paid_lot(type: str, amount: int | None, consumed_paid: int | None) -> bool:
    """Whether a crediting record opened a lot of paid currency: a top-up's, or a purchase's
    grant whose record says all of it was paid (see ledger.purchases)."""
    return type == "top_up" or (type == "purchase_grant" and consumed_paid == amount)


def legacy_lot_id(paid: bool, user_id: str, asset: str) -> uuid.UUID:
    """The id migration 008 gave a balance's legacy lot (no crediting record names it)."""
    name = f"legacy-lot/{'true' if paid else 'false'}/{user_id}/{asset}"
    return uuid.UUID(hashlib.md5(name.encode()).hexdigest())


def target_pieces(
    taken: Sequence[Sequence[Any]], origins: Mapping[uuid.UUID, Origin], user_id: str, asset: str
) -> tuple[lots.Piece, ...]:
    """A spend's or capture's record of what it took ([[lot id, amount], ...]) as pieces that
    can be given back: each with its lot's origin, from the credit that opened it (a legacy
    lot: paid or free as its id says, no expiry)."""
    pieces = []
    for lot_id, amount in taken:
        lot = uuid.UUID(lot_id)
        origin = origins.get(lot)
        if origin is None:
            paid = lot == legacy_lot_id(True, user_id, asset)
            pieces.append(lots.Piece(lot, paid, amount, 0, None, 0))
        else:
            pieces.append(lots.Piece(lot, origin.paid, amount, origin.version, origin.expires_ms,
                                     0))  # fmt: skip
    return tuple(pieces)
