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
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_ID_TAKEN = "hold_id_taken"  # a hold of this name exists (open or resolved)
    HOLD_ALREADY_CAPTURED = "hold_already_captured"
    HOLD_ALREADY_RELEASED = "hold_already_released"
    HOLD_EXPIRED = "hold_expired"
    CAPTURE_EXCEEDS_HOLD = "capture_exceeds_hold"
    TOO_MANY_HOLDS = "too_many_holds"
    IN_DEBT = "in_debt"  # the wallet owes a reversed credit: spends and holds wait for credits
    TRANSACTION_NOT_FOUND = "transaction_not_found"
    ALREADY_REVERSED = "already_reversed"
    NOT_REVERSIBLE = "not_reversible"  # only spends, captures, top-ups and bonuses reverse
    # Transfers: the receiver has no wallet (never had an entry), or the transfer a step
    # names does not exist as that step needs it (the step is dead-lettered, see
    # ledger.transfers: a forged one must not take the real step's key).
    UNKNOWN_WALLET = "unknown_wallet"
    # A spend, capture or transfer past the wallet's daily cap (ledger.caps).
    DAILY_LIMIT_EXCEEDED = "daily_limit_exceeded"
    TRANSFER_NOT_FOUND = "transfer_not_found"


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: ErrorCode
    message: str


class Consumed(BaseModel):
    """What an accepted spend took: paid currency (revenue) and free currency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paid: int
    free: int


class TransferStatus(StrEnum):
    PENDING = "pending"  # debited, the receiver's side not decided yet
    COMPLETED = "completed"  # credited to the receiver
    REFUSED = "refused"  # refused by the receiver's side, given back to the sender


class TransferInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: UUID
    from_user_id: str
    to_user_id: str
    status: TransferStatus


class PurchaseKind(StrEnum):
    ITEM = "item"  # no grants: the costs are consumed like spends
    CONVERSION = "conversion"  # one cost into `exchange`, grants out of it


class PurchasePart(BaseModel):
    """One asset a purchase moved, as the wallet stands after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: str
    amount: int = Field(description="Signed: a cost negative, a grant positive.")
    paid: int = Field(description="The paid part: of a cost, what it took of paid currency; "
                      "of a grant, what it gave as paid currency.")  # fmt: skip
    balance: int
    available: int
    position: str = Field(pattern=r"^[A-Z][A-Z0-9_]*:[1-9][0-9]*$")


class PurchaseInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: UUID | None = Field(description="The purchase (its first cost's transaction); null "
                            "when refused.")  # fmt: skip
    sku: str | None
    kind: PurchaseKind
    refused_asset: str | None = Field(description="Refused: the asset whose cost or grant "
                                      "refused it (the reply's `asset` too).")  # fmt: skip
    parts: list[PurchasePart] | None = Field(
        description="Accepted: every asset it moved, costs then grants. Null in the reply to "
        "a retry: GET /wallet/purchases/{id} has them."
    )


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
    balance: int | None = Field(description="The wallet's total: available + held.")
    paid: int | None = Field(description="The paid part of `available` (bought currency).")
    free: int | None = Field(description="The free part of `available` (bonuses).")
    held: int | None = Field(description="Set aside by open holds: counted, not spendable.")
    available: int | None = Field(description="What a spend or a hold may take now.")
    debt: int | None = Field(
        description="What the wallet owes for reversed credits it had spent; later credits "
        "pay it first, and spends and holds are refused (in_debt) until it is 0."
    )
    hold_id: str | None = Field(description="hold, capture, release: the hold.")
    consumed: Consumed | None = Field(
        description="An accepted spend or capture: what it took; a reverse of one: what went back."
    )
    expired: int | None = Field(
        description="What the transaction booked out of lots whose expiry had come."
    )
    released: int | None = Field(
        description="Held money the transaction gave back to the wallet: a capture's rest, a "
        "release, holds whose expiry had come."
    )
    error: ErrorInfo | None
    processed_at: AwareDatetime
    transfer: TransferInfo | None = Field(
        None,
        description="A transfer: its id (the sender's debit), receiver and state. The reply "
        "to a transfer comes when the receiver's side has decided: completed, or refused (the "
        "amount back in the sender's wallet, `error` the receiver's reason). A retry of the "
        "transfer answers `pending` with the debit; GET /wallet/transfers/{id} tells the rest.",
    )
    purchase: PurchaseInfo | None = Field(
        None,
        description="A purchase: its id, sku and kind, and each asset it moved. Refused, "
        "`asset`, `amount` and the balances are those of the part that refused it.",
    )
    position: str | None = Field(
        None,
        description="An accepted command: the account's ledger position after it, "
        "`ASSET:VERSION` (its version counts its entries). Pass it to a balance read as "
        "`?after=` to read your own write.",
        pattern=r"^[A-Z][A-Z0-9_]*:[1-9][0-9]*$",
    )
