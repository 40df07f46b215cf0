"""The pure decision function: account state + command -> accepted entries or a rejection.

No I/O and no clock of its own: everything it needs is passed in (the time it decides at
included), so it is tested exhaustively as data.
Preconditions and postconditions are asserted: a failed assertion is a bug and must crash
loudly rather than move money wrongly.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ledger import lots
from ledger.lots import LOTS_OPEN_MAX, Lot, Piece, SpendOrder
from schemas.commands import AMOUNT_MAX, Command, CommandType
from schemas.events import AccountKind
from schemas.replies import ErrorCode

# Far below 2**63 so that a sum of many balances in a bigint column cannot overflow first.
BALANCE_MAX = 10**18

_SPEND = CommandType.SPEND.value
_EXPIRE = CommandType.EXPIRE.value
# By plain strings: looking an enum up by value (CommandType(type)) costs about 3 us.
_CREDIT_SOURCE = {CommandType.TOP_UP.value: AccountKind.TREASURY,
                  CommandType.BONUS.value: AccountKind.BONUS_POOL}  # fmt: skip
Assets = Mapping[str, SpendOrder]  # asset code -> its spend order


class AccountState(NamedTuple):
    """A user's wallet for one asset: its balance, how many entries it has, and the open lots
    the balance is made of (`paid` is their paid part, kept so that no reply sums them).
    (A named tuple, not a frozen dataclass: one or two are made per command, and a frozen
    dataclass costs about four times as much to build.)"""

    balance: int
    version: int
    paid: int = 0
    lots: tuple[Lot, ...] = ()  # in `order` (see lots.in_order); in no order when it is None
    due_ms: int | None = None  # the soonest expiry among the lots (None: none expires)
    order: SpendOrder | None = None

    def check(self) -> None:
        """The O(lots) invariants, asserted where a state enters the planner (a cold load)
        and in the property tests; decide() asserts the O(1) ones on every command."""
        assert lots.total(self.lots) == self.balance, self
        assert lots.paid_total(self.lots) == self.paid, self
        assert all(lot.remaining > 0 for lot in self.lots), self
        assert lots.next_due_ms(self.lots) == self.due_ms, self
        assert self.order is None or self.lots == lots.in_order(self.lots, self.order), self


EMPTY_ACCOUNT = AccountState(balance=0, version=0)


class Accepted(NamedTuple):
    account: AccountState
    user_amount: int  # signed change of the user's balance
    # The system accounts' side, signed, summing to -user_amount (see system_legs).
    legs: tuple[tuple[AccountKind, int], ...]
    consumed_paid: int | None = None  # spends: the paid part of the amount
    pieces: tuple[Piece, ...] = ()  # spends: what was taken from which lot
    expired: tuple[Piece, ...] = ()  # the lots whose expiry had come, booked out whole
    amount: int | None = None  # what the record says the command moved (an expire: its total)
    expired_besides: int = 0  # what it booked out besides its amount (an expire: nothing)
    opened: Lot | None = None  # a credit: the lot it opened


@dataclass(frozen=True, slots=True)
class Rejected:
    code: ErrorCode
    message: str


def decide(
    command: Command,
    account: AccountState,
    assets: Assets,
    transaction_id: uuid.UUID,
    now_ms: int,
) -> Accepted | Rejected:
    """Decide one command at time `now_ms` against the user's account state;
    `transaction_id` is the id the transaction gets if accepted (a credit's lot is named by
    it). Lots whose expiry has come are not spendable and are booked out by the transaction."""
    assert 0 <= account.paid <= account.balance <= BALANCE_MAX, account
    assert account.version >= 0, account
    assert command.amount is None or 1 <= command.amount <= AMOUNT_MAX, command.amount

    order = assets.get(command.asset)
    if order is None:
        return Rejected(ErrorCode.UNKNOWN_ASSET, f"asset {command.asset} does not exist")
    if account.order is not order:  # loaded, or the asset's order changed: sort once
        account = account._replace(lots=lots.in_order(account.lots, order), order=order)
    expired, live = lots.due(account.lots, account.due_ms, now_ms)
    if expired:
        account = _without(account, expired, live)
    if command.type is CommandType.EXPIRE:
        return _expire(account, expired, command.asset)
    assert command.amount is not None  # every other type has one (schemas.commands)
    spendable = account.balance
    if command.type is CommandType.SPEND:
        if command.amount > spendable:
            return Rejected(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"balance {spendable} {command.asset} is less than {command.amount}",
            )
        return _spend(command.amount, account, expired)
    refused = _refuse_credit(command, spendable, len(live), now_ms)
    if refused is not None:
        return refused
    return _credit(command, account, expired, transaction_id)


def _without(
    account: AccountState, expired: tuple[Piece, ...], live: tuple[Lot, ...]
) -> AccountState:
    """The account once its expired lots are gone (same version: the transaction that books
    them out is the command's own, one version on)."""
    gone = lots.pieces_total(expired)
    paid_gone = lots.paid_part(expired)
    return AccountState(account.balance - gone, account.version, account.paid - paid_gone,
                        live, lots.next_due_ms(live), account.order)  # fmt: skip


def _refuse_credit(command: Command, balance: int, lots_open: int, now_ms: int) -> Rejected | None:
    assert command.amount is not None
    if balance + command.amount > BALANCE_MAX:
        return Rejected(
            ErrorCode.BALANCE_LIMIT_EXCEEDED,
            f"a balance may not exceed {BALANCE_MAX} {command.asset}",
        )
    if lots_open >= LOTS_OPEN_MAX:
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


def _credit(
    command: Command, account: AccountState, expired: tuple[Piece, ...], tx_id: uuid.UUID
) -> Accepted:
    """`account` is without its expired lots already; the transaction books them out."""
    amount = command.amount
    assert amount is not None
    paid = command.type is CommandType.TOP_UP
    expires_ms = None if command.expires_at is None else _ms(command)
    due_ms = account.due_ms
    if expires_ms is not None:
        due_ms = expires_ms if due_ms is None else min(due_ms, expires_ms)
    assert account.order is not None
    lot = Lot(tx_id, paid, amount, account.version + 1, expires_ms)
    placed = lots.with_lot(account.lots, lot, account.order)
    paid_after = account.paid + (amount if paid else 0)
    after = AccountState(account.balance + amount, account.version + 1, paid_after, placed,
                         due_ms, account.order)  # fmt: skip
    gone = lots.pieces_total(expired)
    _assert_moved(account, after, amount)
    legs = system_legs(command.type.value, amount, None, gone)
    return Accepted(after, amount - gone, legs, expired=expired, amount=amount,
                    expired_besides=gone, opened=lot)  # fmt: skip


def _spend(amount: int, account: AccountState, expired: tuple[Piece, ...]) -> Accepted:
    """`account` is without its expired lots already; the transaction books them out."""
    pieces, left = lots.take(account.lots, amount)
    consumed_paid = lots.paid_part(pieces)
    due_ms = account.due_ms
    if due_ms is not None and any(p.left == 0 and p.expires_ms is not None for p in pieces):
        due_ms = lots.next_due_ms(left)
    after = AccountState(account.balance - amount, account.version + 1,
                         account.paid - consumed_paid, left, due_ms, account.order)  # fmt: skip
    gone = lots.pieces_total(expired)
    _assert_moved(account, after, -amount)
    legs = system_legs(_SPEND, amount, consumed_paid, gone)
    return Accepted(after, -amount - gone, legs, consumed_paid, pieces, expired, amount, gone)


def _expire(account: AccountState, expired: tuple[Piece, ...], asset: str) -> Accepted | Rejected:
    """`account` is without its expired lots already; its transaction books them out."""
    gone = lots.pieces_total(expired)
    if not gone:
        return Rejected(ErrorCode.NOTHING_TO_EXPIRE, f"no lot of {asset} has expired")
    after = account._replace(version=account.version + 1)
    _assert_moved(account, after, 0)
    return Accepted(after, -gone, system_legs(_EXPIRE, gone, None, 0), expired=expired,
                    amount=gone)  # fmt: skip


def system_legs(
    type: str, amount: int, consumed_paid: int | None, expired: int
) -> tuple[tuple[AccountKind, int], ...]:
    """The system side of an accepted transaction, from its record: the planner, the events
    rebuilt from records and `wallet verify` all derive legs here. A credit's source; a
    spend's paid part to revenue and free part to free_spent (a spend recorded before lots
    existed, its paid part unknown, went to revenue whole); an expire's amount, and whatever
    else a transaction booked out as expired, to `expired`."""
    if type == _EXPIRE:
        return ((AccountKind.EXPIRED, amount),)
    if type != _SPEND:
        legs: tuple[tuple[AccountKind, int], ...] = ((_CREDIT_SOURCE[type], -amount),)
    elif consumed_paid is None:
        legs = ((AccountKind.REVENUE, amount),)
    else:
        sides = (
            (AccountKind.REVENUE, consumed_paid),
            (AccountKind.FREE_SPENT, amount - consumed_paid),
        )
        legs = tuple(side for side in sides if side[1])
    return (*legs, (AccountKind.EXPIRED, expired)) if expired else legs


def _assert_moved(before: AccountState, after: AccountState, change: int) -> None:
    """Postconditions of every accepted command."""
    assert after.balance == before.balance + change
    assert 0 <= after.paid <= after.balance <= BALANCE_MAX, after
    assert after.version == before.version + 1
