"""The pure decision function: account state + command -> accepted entries or a rejection.

No I/O and no clock: everything it needs is passed in, so it is tested exhaustively as data.
Preconditions and postconditions are asserted: a failed assertion is a bug and must crash
loudly rather than move money wrongly.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ledger import lots
from ledger.lots import LOTS_OPEN_MAX, Lot, Piece, SpendOrder
from schemas.commands import AMOUNT_MAX, Command, CommandType
from schemas.events import AccountKind
from schemas.replies import ErrorCode

# Far below 2**63 so that a sum of many balances in a bigint column cannot overflow first.
BALANCE_MAX = 10**18

_SPEND = CommandType.SPEND.value
# By plain strings: looking an enum up by value (CommandType(type)) costs about 3 us.
_CREDIT_SOURCE = {CommandType.TOP_UP.value: AccountKind.TREASURY,
                  CommandType.BONUS.value: AccountKind.BONUS_POOL}  # fmt: skip
Assets = Mapping[str, SpendOrder]  # asset code -> its spend order


@dataclass(frozen=True, slots=True)
class AccountState:
    """A user's wallet for one asset: its balance, how many entries it has, and the open lots
    the balance is made of (`paid` is their paid part, kept so that no reply sums them)."""

    balance: int
    version: int
    paid: int = 0
    lots: tuple[Lot, ...] = ()

    def check(self) -> None:
        """The O(lots) invariant, asserted where a state enters the planner (a cold load) and
        in the property tests; decide() asserts the O(1) ones on every command."""
        assert lots.total(self.lots) == self.balance, self
        assert lots.paid_total(self.lots) == self.paid, self
        assert all(lot.remaining > 0 for lot in self.lots), self


EMPTY_ACCOUNT = AccountState(balance=0, version=0)


@dataclass(frozen=True, slots=True)
class Accepted:
    account: AccountState
    user_amount: int  # signed change of the user's balance
    # The system accounts' side, signed, summing to -user_amount: one leg for a credit; for
    # a spend, revenue for its paid part and free_spent for its free part (zeros omitted).
    legs: tuple[tuple[AccountKind, int], ...]
    consumed_paid: int | None = None  # spends: the paid part of the amount
    pieces: tuple[Piece, ...] = ()  # spends: what was taken from which lot


@dataclass(frozen=True, slots=True)
class Rejected:
    code: ErrorCode
    message: str


def decide(
    command: Command, account: AccountState, assets: Assets, transaction_id: uuid.UUID
) -> Accepted | Rejected:
    """Decide one command against the user's current account state; `transaction_id` is the
    id the transaction gets if accepted (a credit's lot is named by it)."""
    assert 0 <= account.paid <= account.balance <= BALANCE_MAX, account
    assert account.version >= 0, account
    assert 1 <= command.amount <= AMOUNT_MAX, command.amount

    order = assets.get(command.asset)
    if order is None:
        return Rejected(ErrorCode.UNKNOWN_ASSET, f"asset {command.asset} does not exist")
    if command.type is CommandType.SPEND:
        if command.amount > account.balance:
            return Rejected(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"balance {account.balance} {command.asset} is less than {command.amount}",
            )
        return _spend(command.amount, account, order)
    if account.balance + command.amount > BALANCE_MAX:
        return Rejected(
            ErrorCode.BALANCE_LIMIT_EXCEEDED,
            f"a balance may not exceed {BALANCE_MAX} {command.asset}",
        )
    if len(account.lots) >= LOTS_OPEN_MAX:
        return Rejected(
            ErrorCode.TOO_MANY_LOTS,
            f"the wallet holds {LOTS_OPEN_MAX} open lots of {command.asset}: spend some first",
        )
    return _credit(command, account, transaction_id)


def _credit(command: Command, account: AccountState, transaction_id: uuid.UUID) -> Accepted:
    paid = command.type is CommandType.TOP_UP
    lot = Lot(transaction_id, paid, command.amount, account.version + 1)
    after = AccountState(
        balance=account.balance + command.amount,
        version=account.version + 1,
        paid=account.paid + (command.amount if paid else 0),
        lots=(*account.lots, lot),
    )
    _assert_moved(account, after, command.amount)
    legs = system_legs(command.type.value, command.amount, None)
    return Accepted(account=after, user_amount=command.amount, legs=legs)


def _spend(amount: int, account: AccountState, order: SpendOrder) -> Accepted:
    pieces, left = lots.take(account.lots, amount, order)
    consumed_paid = lots.paid_part(pieces)
    after = AccountState(
        balance=account.balance - amount,
        version=account.version + 1,
        paid=account.paid - consumed_paid,
        lots=left,
    )
    _assert_moved(account, after, -amount)
    legs = system_legs(CommandType.SPEND.value, amount, consumed_paid)
    return Accepted(after, -amount, legs, consumed_paid, pieces)


def system_legs(
    type: str, amount: int, consumed_paid: int | None
) -> tuple[tuple[AccountKind, int], ...]:
    """The system side of an accepted transaction, from its record: the planner, the events
    rebuilt from records and `wallet verify` all derive legs here. A spend recorded before
    lots existed (consumed_paid unknown) went to revenue whole."""
    if type != _SPEND:
        return ((_CREDIT_SOURCE[type], -amount),)
    if consumed_paid is None:
        return ((AccountKind.REVENUE, amount),)
    sides = ((AccountKind.REVENUE, consumed_paid), (AccountKind.FREE_SPENT, amount - consumed_paid))
    return tuple(side for side in sides if side[1])


def _assert_moved(before: AccountState, after: AccountState, change: int) -> None:
    """Postconditions of every accepted command."""
    assert after.balance == before.balance + change
    assert 0 <= after.paid <= after.balance <= BALANCE_MAX, after
    assert after.version == before.version + 1
