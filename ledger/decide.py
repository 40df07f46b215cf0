"""The pure decision function: account state + command -> accepted entries or a rejection.

No I/O and no clock of its own: everything it needs is passed in (the time it decides at
included), so it is tested exhaustively as data.
Preconditions and postconditions are asserted: a failed assertion is a bug and must crash
loudly rather than move money wrongly.
"""

from __future__ import annotations

import uuid

from ledger import holds, legs, lots, reversals, transfers
from ledger.account import (
    BALANCE_MAX,
    NO_REFERENCES,
    Accepted,
    AccountState,
    Assets,
    Hold,
    References,
    Rejected,
    assert_moved,
)
from ledger.lots import LOTS_OPEN_MAX, Lot, Piece
from schemas.commands import AMOUNT_MAX, Command, CommandType
from schemas.replies import ErrorCode

_EXPIRE = CommandType.EXPIRE.value
_CREDITS = (CommandType.TOP_UP, CommandType.BONUS)
_BESIDES = Accepted._fields.index("expired_besides")
_DEBT_PAID = Accepted._fields.index("debt_paid")


def decide(
    command: Command,
    account: AccountState,
    assets: Assets,
    transaction_id: uuid.UUID,
    now_ms: int,
    refs: References = NO_REFERENCES,
) -> Accepted | Rejected:
    """Decide one command at time `now_ms` against the user's account state;
    `transaction_id` is the id the transaction gets if accepted (a credit's lot is named by
    it); `refs` what the command names besides its wallet (holds, a reversed transaction).
    Holds and lots whose expiry has come are given back and booked out by the transaction."""
    assert 0 <= account.paid <= account.balance, account
    assert account.balance + account.held <= BALANCE_MAX, account
    assert account.version >= 0 and account.debt >= 0, account
    assert command.amount is None or 1 <= command.amount <= AMOUNT_MAX, command.amount

    asset = assets.get(command.asset)
    if asset is None:
        return Rejected(ErrorCode.UNKNOWN_ASSET, f"asset {command.asset} does not exist")
    order = asset.order
    if account.order is not order:  # loaded, or the asset's order changed: sort once
        account = account._replace(lots=lots.in_order(account.lots, order), order=order)
    if not (account.holds or account.debt) and (account.due_ms is None or account.due_ms > now_ms):
        plain = _plain(command, account, transaction_id, now_ms, asset.balance_max)
        if plain is not None:
            return plain
    start = account
    lapsed: tuple[Hold, ...] = ()
    restored: tuple[Lot, ...] = ()
    if account.holds:  # most wallets hold none: no call
        account, lapsed, restored = holds.lapse(account, now_ms)
    expired, live = lots.due(account.lots, account.due_ms, now_ms)
    if expired:
        account = _without(account, expired, live)
    own = _by_type(command, account, (transaction_id, now_ms, asset.balance_max), refs,
                   (expired, lapsed))  # fmt: skip
    if isinstance(own, Rejected):
        return own
    if not (expired or lapsed or restored or own.restored):  # most commands: nothing else moved
        return _legged(command.type.value, start, own, own.account, 0, own.debt_paid)
    return _booked(command.type.value, start, own, (expired, lapsed), restored, now_ms)


def _plain(
    command: Command, account: AccountState, tx_id: uuid.UUID, now_ms: int, balance_max: int
) -> Accepted | None:
    """Most of the traffic: a credit or spend on a wallet with nothing else to book (no
    holds, no debt, no lot due), accepted. Nothing besides its type's own legs moved, so they
    are derived without the general path's extras (tests/unit/test_decide.py checks that both
    paths decide alike): about a quarter of the decision's cost. None: the general path
    decides it (a refusal, an expiring credit, any other type)."""
    kind = command.type
    amount = command.amount
    if kind is CommandType.SPEND:
        assert amount is not None
        if amount > account.balance:
            return None
        own = _spend(command, account)
        user_amount = -amount
    elif kind in _CREDITS and command.expires_at is None:
        if _refuse_credit(command, account, now_ms, balance_max) is not None:
            return None
        assert amount is not None
        own = _credit(command, account, tx_id)
        user_amount = amount  # no debt: all of it opens a lot
    else:
        return None
    assert isinstance(own, Accepted) and own.amount is not None
    system = legs.system_legs(str(kind), own.amount, own.consumed_paid, legs.NO_EXTRAS)
    assert_moved(account, own.account, user_amount)
    return Accepted._make((own.account, user_amount, system, *own[3:]))


def _by_type(
    command: Command,
    account: AccountState,
    at: tuple[uuid.UUID, int, int],
    refs: References,
    due: tuple[tuple[Piece, ...], tuple[Hold, ...]],
) -> Accepted | Rejected:
    """The command's own decision (`account` without its expired lots and lapsed holds);
    `at`: its transaction id, the time it is decided at, the asset's balance limit."""
    tx_id, now_ms, balance_max = at
    kind = command.type
    if kind is CommandType.SPEND or kind is CommandType.TRANSFER:  # a transfer debits alike
        return _spend(command, account)
    if kind is CommandType.TOP_UP or kind is CommandType.BONUS:
        refused = _refuse_credit(command, account, now_ms, balance_max)
        return refused or _credit(command, account, tx_id)
    if kind is CommandType.EXPIRE:
        return _expire(account, due, command.asset)
    if kind is CommandType.HOLD:
        return holds.hold(command, account, tx_id, now_ms, refs, due[1])
    if kind is CommandType.REVERSE:
        return reversals.reverse(command, account, refs)
    if kind is CommandType.TRANSFER_IN:
        return transfers.receive(command, account, refs, balance_max)
    if kind is CommandType.TRANSFER_REFUND:
        return transfers.refund(command, account, refs)
    return holds.resolve(command, account, refs, due[1])


def _booked(
    type: str,
    start: AccountState,
    own: Accepted,
    due: tuple[tuple[Piece, ...], tuple[Hold, ...]],
    restored: tuple[Lot, ...],
    now_ms: int,
) -> Accepted:
    """The accepted decision with what it booked on its way: lots whose expiry had come
    (before it, and among the lots its own give-back reopened) booked out, lapsed holds given
    back, and currency given back paying the wallet's debt first."""
    expired, lapsed = due
    account = own.account
    late, live = lots.due(account.lots, account.due_ms, now_ms)
    if late:  # a release, capture or reversal gave back to a lot whose expiry had come
        assert type != _EXPIRE, late
        account = _without(account, late, live)
        expired = (*expired, *late)
    returned = (*(p for h in lapsed for p in h.pieces), *own.returned)
    account, settled = _settle(account, returned)
    gone = 0 if type == _EXPIRE else lots.pieces_total(expired)
    debt_paid = own.debt_paid + lots.pieces_total(settled)
    own = own._replace(
        released=own.released + sum(h.amount for h in lapsed), expired=expired,
        expired_besides=gone, restored=(*restored, *own.restored), returned=returned,
        resolved=(*((h, "expired") for h in lapsed), *own.resolved), settled=settled,
    )  # fmt: skip
    return _legged(type, start, own, account, gone, debt_paid)


def _legged(
    type: str, start: AccountState, own: Accepted, after: AccountState, gone: int, debt_paid: int
) -> Accepted:
    """The decision with its legs, derived from what its record will say (ledger.legs); the
    user's balances them, and must be exactly what the balance moved by (asserted: the
    ledger and the state cannot part)."""
    assert own.amount is not None
    extras = legs.extras(gone, own.released, debt_paid, own.debt_added, own.reversed_type,
                         own.unexpired)  # fmt: skip
    system = legs.system_legs(type, own.amount, own.consumed_paid, extras)
    user_amount = 0
    for _, moved in system:  # one to four legs: a loop beats sum() over a generator here
        user_amount -= moved
    assert_moved(start, after, user_amount)
    # Built from the tuple, not by _replace: this is every command's path, and _replace
    # costs several times as much (the indices are looked up by name, once).
    fields = (after, user_amount, system, *own[3:_BESIDES], gone,
              *own[_BESIDES + 1 : _DEBT_PAID], debt_paid, *own[_DEBT_PAID + 1 :])  # fmt: skip
    return Accepted._make(fields)


def _settle(
    account: AccountState, returned: tuple[Piece, ...]
) -> tuple[AccountState, tuple[Piece, ...]]:
    """Currency given back to a wallet in debt (a release, a capture's rest, lapsed holds, a
    reversed spend) pays the debt first, as a credit does (after the transaction's own credit
    has paid what it could): taken from the lots in spend order."""
    if not account.debt or not returned:
        return account, ()
    pay = min(account.debt, lots.pieces_total(returned), account.balance)
    if not pay:
        return account, ()
    taken, left = lots.take(account.lots, pay)
    settled = account._replace(
        balance=account.balance - pay, paid=account.paid - lots.paid_part(taken), lots=left,
        due_ms=lots.next_due_ms(left), debt=account.debt - pay,
    )  # fmt: skip
    return settled, taken


def _without(
    account: AccountState, expired: tuple[Piece, ...], live: tuple[Lot, ...]
) -> AccountState:
    """The account once its expired lots are gone (same version: the transaction that books
    them out is the command's own, one version on)."""
    gone = lots.pieces_total(expired)
    paid_gone = lots.paid_part(expired)
    return account._replace(balance=account.balance - gone, paid=account.paid - paid_gone,
                            lots=live, due_ms=lots.next_due_ms(live))  # fmt: skip


def _refuse_credit(
    command: Command, account: AccountState, now_ms: int, balance_max: int
) -> Rejected | None:
    assert command.amount is not None and 1 <= balance_max <= BALANCE_MAX, balance_max
    if account.total() + command.amount > balance_max:
        return Rejected(
            ErrorCode.BALANCE_LIMIT_EXCEEDED,
            f"a balance may not exceed {balance_max} {command.asset}",
        )
    if len(account.lots) >= LOTS_OPEN_MAX:
        return Rejected(
            ErrorCode.TOO_MANY_LOTS,
            f"the wallet holds {LOTS_OPEN_MAX} open lots of {command.asset}: spend some first",
        )
    if command.expires_at is not None and _ms(command) <= now_ms:
        return Rejected(ErrorCode.INVALID_EXPIRY, "expires_at has passed already")
    return None


def _ms(command: Command) -> int:
    assert command.expires_at is not None
    return lots.epoch_ms(command.expires_at)


def _credit(command: Command, account: AccountState, tx_id: uuid.UUID) -> Accepted:
    """A credit pays the wallet's debt first; the rest opens a lot."""
    amount = command.amount
    assert amount is not None and account.order is not None
    debt_paid = min(account.debt, amount)
    version = account.version + 1
    if debt_paid == amount:
        after = account._replace(version=version, debt=account.debt - debt_paid)
        return Accepted(after, 0, (), amount=amount, debt_paid=debt_paid)
    paid = command.type is CommandType.TOP_UP
    expires_ms = None if command.expires_at is None else _ms(command)
    due_ms = account.due_ms
    if expires_ms is not None:
        due_ms = expires_ms if due_ms is None else min(due_ms, expires_ms)
    lot = Lot(tx_id, paid, amount - debt_paid, version, expires_ms)
    # Built whole, not by _replace: this is the hot path, and _replace costs twice as much.
    after = AccountState(account.balance + lot.remaining, version,
                         account.paid + (lot.remaining if paid else 0),
                         lots.with_lot(account.lots, lot, account.order), due_ms, account.order,
                         account.holds, account.held, account.debt - debt_paid)  # fmt: skip
    return Accepted(after, 0, (), amount=amount, opened=lot, debt_paid=debt_paid)


def _spend(command: Command, account: AccountState) -> Accepted | Rejected:
    amount = command.amount
    assert amount is not None
    if account.debt:
        return holds.in_debt(account, command.asset)
    if amount > account.balance:
        return holds.insufficient(account, command.asset, amount)
    pieces, left = lots.take(account.lots, amount)
    consumed_paid = lots.paid_part(pieces)
    due_ms = account.due_ms
    if due_ms is not None and any(p.left == 0 and p.expires_ms is not None for p in pieces):
        due_ms = lots.next_due_ms(left)
    after = AccountState(account.balance - amount, account.version + 1,
                         account.paid - consumed_paid, left, due_ms, account.order,
                         account.holds, account.held, account.debt)  # fmt: skip
    return Accepted(after, 0, (), consumed_paid, pieces, amount=amount)


def _expire(
    account: AccountState, due: tuple[tuple[Piece, ...], tuple[Hold, ...]], asset: str
) -> Accepted | Rejected:
    """Book out the expired lots and give back the lapsed holds (already out of `account`)."""
    expired, lapsed = due
    if not expired and not lapsed:
        return Rejected(ErrorCode.NOTHING_TO_EXPIRE, f"nothing of {asset} has expired")
    after = account._replace(version=account.version + 1)
    return Accepted(after, 0, (), amount=lots.pieces_total(expired))
