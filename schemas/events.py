"""Accepted ledger events, published to `wallet.events` keyed by user id."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.commands import CommandType


class AccountKind(StrEnum):
    """Whose account an entry moves. System accounts are per asset and never locked."""

    USER = "user"
    TREASURY = "treasury"  # source of paid top-ups
    BONUS_POOL = "bonus_pool"  # source of free credits
    REVENUE = "revenue"  # sink of spends of paid currency: revenue, as finance books it
    FREE_SPENT = "free_spent"  # sink of spends of free currency (given away, never revenue)
    EXPIRED = "expired"  # sink of lots whose expiry came before they were spent
    HOLDS = "holds"  # escrow: what open holds keep aside until captured, released or expired
    # What wallets owe: a reversed credit already spent (negative while debt is open; the
    # credits that pay it back bring it back towards zero).
    RECEIVABLE = "receivable"
    # Transfers in flight: debited from their sender, not yet credited to their receiver nor
    # given back (it sums to what is in flight).
    TRANSFERS = "transfers"
    # Conversions: what conversions took of an asset (their costs) less what they gave of it
    # (their grants). Prices live with the caller, so it sums to nothing in particular.
    EXCHANGE = "exchange"


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: AccountKind
    amount: int  # signed: credit to the account is positive


class LedgerEvent(BaseModel):
    """One accepted transaction: its entries sum to zero."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: UUID
    command_id: UUID
    idempotency_key: str
    type: CommandType
    user_id: str
    asset: str
    amount: int  # an expire: what it booked out
    balance_after: int  # the user account's balance: what is available
    version: int
    paid_after: int | None  # the paid part of balance_after; None before lots existed
    held_after: int  # set aside by open holds (not in balance_after, the available part)
    debt_after: int  # what the wallet owes for reversed credits it had spent
    hold_id: str | None  # hold, capture, release
    reverses: UUID | None  # reverse: the transaction it undid
    reason: str | None  # reverse: why; transfer_refund: the receiver's refusal
    transfer_id: UUID | None = None  # transfer, transfer_in, transfer_refund: the transfer
    counterparty: str | None = None  # transfer: the receiver; its steps: the sender
    # purchase, conversion, purchase_grant: the purchase (its first cost's transaction id, one
    # event per asset it moved) and what was bought.
    purchase_id: UUID | None = None
    sku: str | None = None
    entries: list[Entry]
    description: str | None
    occurred_at: AwareDatetime
