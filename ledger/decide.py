"""The pure decision function: account state + command -> accepted entries or a rejection.

No I/O and no clock: everything it needs is passed in, so it is tested exhaustively as data.
Preconditions and postconditions are asserted: a failed assertion is a bug and must crash
loudly rather than move money wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.commands import AMOUNT_MAX, Command, CommandType
from schemas.events import AccountKind
from schemas.replies import ErrorCode

# Far below 2**63 so that a sum of many balances in a bigint column cannot overflow first.
BALANCE_MAX = 10**18

SYSTEM_ACCOUNT = {
    CommandType.TOP_UP: AccountKind.TREASURY,
    CommandType.BONUS: AccountKind.BONUS_POOL,
    CommandType.SPEND: AccountKind.REVENUE,
}


@dataclass(frozen=True, slots=True)
class AccountState:
    """A user's wallet for one asset: its balance and how many entries it has."""

    balance: int
    version: int


EMPTY_ACCOUNT = AccountState(balance=0, version=0)


@dataclass(frozen=True, slots=True)
class Accepted:
    account: AccountState
    user_amount: int  # signed change of the user's balance
    system_account: AccountKind


@dataclass(frozen=True, slots=True)
class Rejected:
    code: ErrorCode
    message: str


def decide(command: Command, account: AccountState, assets: frozenset[str]) -> Accepted | Rejected:
    """Decide one command against the user's current account state."""
    assert 0 <= account.balance <= BALANCE_MAX, account
    assert account.version >= 0, account
    assert 1 <= command.amount <= AMOUNT_MAX, command.amount

    if command.asset not in assets:
        return Rejected(ErrorCode.UNKNOWN_ASSET, f"asset {command.asset} does not exist")
    if command.type is CommandType.SPEND:
        if command.amount > account.balance:
            return Rejected(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"balance {account.balance} {command.asset} is less than {command.amount}",
            )
        change = -command.amount
    else:
        if account.balance + command.amount > BALANCE_MAX:
            return Rejected(
                ErrorCode.BALANCE_LIMIT_EXCEEDED,
                f"a balance may not exceed {BALANCE_MAX} {command.asset}",
            )
        change = command.amount

    after = AccountState(balance=account.balance + change, version=account.version + 1)
    assert 0 <= after.balance <= BALANCE_MAX, after
    assert after.version == account.version + 1
    return Accepted(account=after, user_amount=change, system_account=SYSTEM_ACCOUNT[command.type])
