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
    balance_after: int
    version: int
    paid_after: int | None  # the paid part of balance_after; None before lots existed
    entries: list[Entry]
    description: str | None
    occurred_at: AwareDatetime
