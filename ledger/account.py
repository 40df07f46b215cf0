"""A wallet's state for one asset as the single writer of its partition holds it, and what a
decision returns. Pure data."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ledger import lots
from ledger.lots import Lot, Piece, SpendOrder
from schemas.events import AccountKind
from schemas.replies import ErrorCode

# Far below 2**63 so that a sum of many balances in a bigint column cannot overflow first.
BALANCE_MAX = 10**18
# Open holds are loaded and written with their account, like its lots: bounded the same way
# (a hold past it is refused: too_many_holds).
HOLDS_OPEN_MAX = 100


class Asset(NamedTuple):
    """An asset as the catalogue sets it (`wallet assets`)."""

    order: SpendOrder = SpendOrder.FREE_FIRST  # which lots a spend takes first
    # A wallet's total of it (held money included) that a credit may not take it past; what
    # gives back money already the wallet's (a release, a reversed spend) is never refused.
    balance_max: int = BALANCE_MAX


Assets = Mapping[str, Asset]  # asset code -> its rules


class Hold(NamedTuple):
    """An open hold: what it took from which lots, kept aside until it is resolved."""

    hold_id: str
    transaction_id: uuid.UUID  # the hold's own transaction
    amount: int
    pieces: tuple[Piece, ...]  # in the order taken; a capture spends them from the front
    expires_ms: int


class AccountState(NamedTuple):
    """A user's wallet for one asset: its balance (what is available: the user account's
    ledger balance), how many entries it has, the open lots that balance is made of (`paid` is
    their paid part, kept so that no reply sums them), the open holds and what they keep
    aside (`held`: outside the balance, in the `holds` escrow account), and the debt left by
    reversed credits it had spent.
    (A named tuple, not a frozen dataclass: one or two are made per command, and a frozen
    dataclass costs about four times as much to build.)"""

    balance: int
    version: int
    paid: int = 0
    lots: tuple[Lot, ...] = ()  # in `order` (see lots.in_order); in no order when it is None
    due_ms: int | None = None  # the soonest expiry among the lots (None: none expires)
    order: SpendOrder | None = None
    holds: tuple[Hold, ...] = ()  # in no particular order
    held: int = 0
    debt: int = 0

    def check(self) -> None:
        """The O(lots) invariants, asserted where a state enters the planner (a cold load)
        and in the property tests; decide() asserts the O(1) ones on every command."""
        assert lots.total(self.lots) == self.balance, self
        assert lots.paid_total(self.lots) == self.paid, self
        assert all(lot.remaining > 0 for lot in self.lots), self
        assert lots.next_due_ms(self.lots) == self.due_ms, self
        assert self.order is None or self.lots == lots.in_order(self.lots, self.order), self
        assert sum(h.amount for h in self.holds) == self.held, self
        assert all(lots.pieces_total(h.pieces) == h.amount > 0 for h in self.holds), self
        assert self.debt >= 0, self

    def total(self) -> int:
        """What the wallet holds, held money included."""
        return self.balance + self.held


EMPTY_ACCOUNT = AccountState(balance=0, version=0)


class Accepted(NamedTuple):
    account: AccountState
    user_amount: int  # signed change of the user's balance
    # The system accounts' side, signed, summing to -user_amount (see ledger.legs).
    legs: tuple[tuple[AccountKind, int], ...]
    consumed_paid: int | None = None  # spends, captures, reversed ones: the paid part
    pieces: tuple[Piece, ...] = ()  # what was taken from (or, reversed, given back to) lots
    # Whether each piece's `left` is what its lot holds after the transaction (False: a
    # capture's pieces come out of its hold; a reversed spend's go back, see `restored`).
    pieces_from_lots: bool = True
    expired: tuple[Piece, ...] = ()  # the lots whose expiry had come, booked out whole
    amount: int | None = None  # what the record says the command moved (an expire: its total)
    expired_besides: int = 0  # what it booked out besides its amount (an expire: nothing)
    opened: Lot | None = None  # a credit: the lot it opened (None: it all paid debt)
    restored: tuple[Lot, ...] = ()  # lots given back to (or received), as they are after it
    returned: tuple[Piece, ...] = ()  # what was given back to lots (holds, reversed spends)
    released: int = 0  # held money given back to the balance (holds lapsed, a capture's rest)
    hold: Hold | None = None  # a hold: the hold it opened
    resolved: tuple[tuple[Hold, str], ...] = ()  # holds it closed: captured, released, expired
    debt_paid: int = 0  # a credit: what of it paid debt
    debt_added: int = 0  # a reversed credit: what of it had been spent already
    unexpired: int = 0  # a reversed credit: what of it expiry had booked out (taken back)
    settled: tuple[Piece, ...] = ()  # what currency given back paid of the debt, from lots
    reversed_type: str | None = None  # a reverse: the type of the transaction undone


class Target(NamedTuple):
    """A transaction a reverse (or a transfer's step) names, as its record says."""

    user_id: str
    asset: str
    type: str
    amount: int
    consumed_paid: int | None  # a spend or capture: its paid part
    pieces: tuple[Piece, ...]  # a spend or capture: what it took from which lots
    reversed: bool  # reversed already
    before_lots: bool = False  # recorded before lots existed (its lots are not known)
    expired: int = 0  # a credit: what expiry booked out of its lot
    counterparty: str | None = None  # a transfer: its receiver


class Step(NamedTuple):
    """A transfer step's record (transfer_in or transfer_refund): how it was decided."""

    status: str
    error_code: str | None
    error_message: str | None


HoldKey = tuple[str, str, str]  # (user_id, asset, hold_id)


class References(NamedTuple):
    """What commands name besides their own wallet, looked up before a batch is planned:
    how each named hold that is no longer open was resolved, each transaction a reverse
    names, and for a transfer's steps the transfer, its steps so far and whether its receiver
    has a wallet."""

    holds: Mapping[HoldKey, str]  # -> captured, released or expired
    targets: Mapping[uuid.UUID, Target]  # a transfer's step finds its transfer here
    # Transfer id -> its steps recorded so far, by type (transfer_in, transfer_refund).
    transfers: Mapping[uuid.UUID, Mapping[str, Step]] = {}
    wallets: frozenset[str] = frozenset()  # the users named who have a wallet (an entry)


NO_REFERENCES = References({}, {})


@dataclass(frozen=True, slots=True)
class Rejected:
    code: ErrorCode
    message: str


def assert_moved(before: AccountState, after: AccountState, change: int) -> None:
    """Postconditions of every accepted command: `change` is the balance's."""
    assert after.balance == before.balance + change
    assert 0 <= after.paid <= after.balance, after
    assert after.held >= 0 and after.total() <= BALANCE_MAX, after
    assert after.debt >= 0, after
    assert after.version == before.version + 1
