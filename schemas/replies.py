"""The reply to every processed command, published to the command's `reply_to` topic."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.commands import CommandType


class Status(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class ErrorCode(StrEnum):
    """Why a command was rejected. Stable strings: callers branch on these."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_ASSET = "unknown_asset"
    INVALID_COMMAND = "invalid_command"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    BALANCE_LIMIT_EXCEEDED = "balance_limit_exceeded"
    WRONG_PARTITION = "wrong_partition"
    TOO_MANY_LOTS = "too_many_lots"
    INVALID_EXPIRY = "invalid_expiry"
    NOTHING_TO_EXPIRE = "nothing_to_expire"


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: ErrorCode
    message: str


class Consumed(BaseModel):
    """What an accepted spend took: paid currency (revenue) and free currency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paid: int
    free: int


class Reply(BaseModel):
    """Outcome of one command. A consumer dedupes by `command_id` (delivery is at-least-once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: UUID
    idempotency_key: str | None
    user_id: str | None
    status: Status
    duplicate: bool
    transaction_id: UUID | None
    type: CommandType | None
    asset: str | None
    amount: int | None
    balance: int | None
    paid: int | None = Field(description="The paid part of `balance` (bought currency).")
    free: int | None = Field(description="The free part of `balance` (bonuses).")
    consumed: Consumed | None = Field(description="An accepted spend: what it took.")
    expired: int | None = Field(
        description="What the transaction booked out of lots whose expiry had come."
    )
    error: ErrorInfo | None
    processed_at: AwareDatetime
