"""The command a game server publishes to `wallet.commands` (key = user id, UTF-8)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated
from uuid import UUID

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from foundation.topic_names import DEFAULT_REPLIES_TOPIC, TOPIC_NAME_CHARS_MAX, TOPIC_NAME_PATTERN

CANONICAL_UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_CANONICAL_UUID = re.compile(CANONICAL_UUID_PATTERN)
AMOUNT_MIN = 1
AMOUNT_MAX = 10**15
METADATA_KEYS_MAX = 16
METADATA_BYTES_MAX = 2048

UserId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
AssetCode = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,31}$")]
TopicName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TOPIC_NAME_CHARS_MAX, pattern=TOPIC_NAME_PATTERN),
]
Description = Annotated[
    str, StringConstraints(max_length=512, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")
]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# Integers are bounded to 64 bits: orjson (and so the ledger's JSON and every reply) cannot
# encode larger ones, and a command that cannot be encoded must be refused, not crash the worker.
MetadataInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
# No NUL in metadata: PostgreSQL's jsonb (and text) cannot store it, so a command holding one
# would pass validation and then fail its batch on every retry, stalling the partition. (Keys
# are checked in Command._small_metadata: a key pattern would turn the JSON Schema's
# additionalProperties into patternProperties, which lets other keys through unchecked.)
MetadataText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00]*$")]
MetadataValue = MetadataText | MetadataInt | bool | None


class CommandType(StrEnum):
    """What a command does to the user's wallet."""

    TOP_UP = "top_up"  # credit, paid for: treasury -> user
    BONUS = "bonus"  # credit, free: bonus pool -> user
    SPEND = "spend"  # debit: user -> revenue (paid part) and free_spent (free part)
    # Book out whatever of the wallet has expired (no amount): what the processor's expiry
    # sweep sends for wallets nobody touches; every other command does it on its way.
    EXPIRE = "expire"
    HOLD = "hold"  # set `amount` aside (user -> holds) until captured, released or expired
    CAPTURE = "capture"  # spend what a hold set aside (all or part; the rest goes back)
    RELEASE = "release"  # give what a hold set aside back to the wallet
    # Undo an accepted spend, capture, top-up or bonus (once): a spend's currency goes back to
    # the lots it came from; a credit is taken back from what is left of its lot, the
    # shortfall becoming the wallet's debt.
    REVERSE = "reverse"
    # Give `amount` to another user (`to_user_id`), on any partition: a saga through the log
    # (ledger.transfers). The sender's wallet is debited into the `transfers` clearing account
    # at once; the two steps after it are the wallet's own commands, sent through the outbox:
    TRANSFER = "transfer"
    TRANSFER_IN = "transfer_in"  # internal: credit the receiver (or refuse), keyed by them
    TRANSFER_REFUND = "transfer_refund"  # internal: give a refused transfer back to its sender
    # Pay `costs` (1-8 assets) for a `sku`, and receive `grants` (0-8): all parts booked in one
    # transaction of the buyer's partition, or none (ledger.purchases). With no grants an item
    # purchase (costs consumed like spends); with grants a conversion (one cost, each part
    # through the asset's `exchange` account).
    PURCHASE = "purchase"
    # What the ledger records of a purchase besides `purchase` (an item purchase's cost):
    # record types only, refused as commands.
    CONVERSION = "conversion"  # a conversion's cost: user -> exchange
    PURCHASE_GRANT = "purchase_grant"  # a conversion's grant: exchange -> user (a new lot)


CREDITS = frozenset({CommandType.TOP_UP, CommandType.BONUS})
# The idempotency keys of the processor's expiry sweep (`expire` commands it sends for wallets
# nobody touches): reserved, so that no other command of the user can take one first and make
# the sweep's expire a refused key reuse, again at every pass.
SWEEP_KEY_PREFIX = "wallet-expiry-sweep:"
# The steps a transfer sends itself: only the wallet may use these types, each with the one
# key its transfer gives it (prefix + transfer id), so that no command can take a step's key
# first and leave the transfer stuck half way.
INTERNAL_KEY_PREFIXES = {"transfer_in": "transfer-in:", "transfer_refund": "transfer-refund:"}
INTERNAL_TYPES = frozenset({CommandType.TRANSFER_IN, CommandType.TRANSFER_REFUND})
# The keys of a purchase's records besides its own (one per further asset it moves, see
# ledger.purchases): reserved, so that no command takes a part's key first.
PURCHASE_PART_KEY_PREFIX = "purchase-part:"
RECORD_ONLY_TYPES = frozenset({CommandType.CONVERSION, CommandType.PURCHASE_GRANT})
_RESERVED_KEY_PREFIXES = (SWEEP_KEY_PREFIX, PURCHASE_PART_KEY_PREFIX,
                          *INTERNAL_KEY_PREFIXES.values())  # fmt: skip
EXPIRES_AT_AHEAD_MAX = timedelta(days=3660)  # about ten years
HOLD_EXPIRES_IN_S_MIN = 1
HOLD_EXPIRES_IN_S_MAX = 30 * 24 * 3600  # thirty days
# Which fields each type takes: (amount, hold_id, expires_in_s, transaction_id and reason);
# "required", "optional" or absent (None).
_FIELDS: dict[CommandType, tuple[str | None, str | None, str | None, str | None]] = {
    CommandType.TOP_UP: ("required", None, None, None),
    CommandType.BONUS: ("required", None, None, None),
    CommandType.SPEND: ("required", None, None, None),
    CommandType.EXPIRE: (None, None, None, None),
    CommandType.HOLD: ("required", "optional", "required", None),
    CommandType.CAPTURE: ("optional", "required", None, None),
    CommandType.RELEASE: (None, "required", None, None),
    CommandType.REVERSE: (None, None, None, "required"),
    CommandType.TRANSFER: ("required", None, None, None),
    CommandType.TRANSFER_IN: ("required", None, None, "required"),
    CommandType.TRANSFER_REFUND: (None, None, None, "required"),
    CommandType.PURCHASE: (None, None, None, None),
}
PARTS_MAX = 8  # costs, and grants, of one purchase
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")]
_AMOUNT_ONLY = frozenset({CommandType.TOP_UP, CommandType.BONUS, CommandType.SPEND})
HoldId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
]


class Part(BaseModel):
    """One asset a purchase pays (a cost) or receives (a grant)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    asset: AssetCode
    amount: int = Field(ge=AMOUNT_MIN, le=AMOUNT_MAX, description="Integer minor units.")


class Command(BaseModel):
    """One wallet command. Strict: no coercion, unknown fields rejected, amounts are integers."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    command_id: UUID = Field(
        description="Correlation id, a UUID in canonical lower-case form; the reply carries it "
        "back as written.",
        json_schema_extra={"pattern": CANONICAL_UUID_PATTERN},
    )
    idempotency_key: IdempotencyKey = Field(
        description="Unique per user; retries reuse it. Keys starting with "
        f"'{SWEEP_KEY_PREFIX}' are the expiry sweep's (only an expire may use one); keys "
        "starting with 'transfer-in:' or 'transfer-refund:' are a transfer's own steps', and "
        "keys starting with 'purchase-part:' a purchase's parts'."
    )
    type: CommandType = Field(
        description="conversion and purchase_grant are record types (replies and events name "
        "them): a command is refused them.",
        json_schema_extra={"enum": [t.value for t in CommandType if t not in RECORD_ONLY_TYPES]},
    )
    user_id: UserId
    asset: AssetCode
    amount: int | None = Field(
        default=None, ge=AMOUNT_MIN, le=AMOUNT_MAX,
        description="Integer minor units. Required for top_up, bonus, spend and hold; "
        "optional for capture (default: all the hold keeps); expire, release and reverse "
        "take none.",
    )  # fmt: skip
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="top_up and bonus only: when the credited lot stops being spendable "
        "(RFC 3339, with zone, at most about ten years after sent_at).",
    )
    hold_id: HoldId | None = Field(
        default=None,
        description="hold: the hold's name, unique per user and asset (default: its "
        "transaction id); capture and release: the hold they resolve.",
    )
    expires_in_s: int | None = Field(
        default=None, ge=HOLD_EXPIRES_IN_S_MIN, le=HOLD_EXPIRES_IN_S_MAX,
        description="hold only (required): seconds until the hold expires and its amount "
        "goes back to the wallet (1 s to 30 days).",
    )  # fmt: skip
    transaction_id: UUID | None = Field(
        default=None,
        description="reverse (required): the accepted transaction to undo; transfer_in and "
        "transfer_refund: the transfer (the wallet sends these itself).",
        json_schema_extra={"pattern": CANONICAL_UUID_PATTERN},
    )
    reason: Description | None = Field(
        default=None, description="reverse only (required): why, as support or finance says it."
    )
    to_user_id: UserId | None = Field(
        default=None, description="transfer only (required): who receives the amount."
    )
    costs: list[Part] | None = Field(
        default=None, min_length=1, max_length=PARTS_MAX,
        description="purchase only (required): what it pays, 1-8 assets, the first one the "
        "command's `asset`.",
    )  # fmt: skip
    grants: list[Part] | None = Field(
        default=None, max_length=PARTS_MAX,
        description="purchase only: what it gives, 0-8 assets (a conversion: exactly one "
        "cost); no asset twice across costs and grants.",
    )  # fmt: skip
    sku: Sku | None = Field(
        default=None, description="purchase only (required): what was bought, as the caller "
        "prices it (the ledger records it, never a price).",
    )  # fmt: skip
    description: Description | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict)
    reply_to: TopicName = DEFAULT_REPLIES_TOPIC
    sent_at: AwareDatetime = Field(description="When the producer sent it (RFC 3339, with zone).")

    @field_validator("command_id", "transaction_id", mode="before")
    @classmethod
    def _canonical_uuid(cls, value: object, info: ValidationInfo) -> object:
        # Why only one spelling: the reply carries the canonical form, so a producer that sent
        # "{A1B2...}" or "urn:uuid:..." and matched replies by string would never see its own.
        if isinstance(value, str) and not _CANONICAL_UUID.fullmatch(value):
            raise ValueError(
                f"{info.field_name} must be a UUID in canonical form: 36 characters, "
                "lower-case hex digits in groups of 8-4-4-4-12"
            )
        return value

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> Command:
        plain = self.type in _AMOUNT_ONLY  # most commands: checked without the table's loop
        if plain and self.amount is not None and self.hold_id is None is self.expires_in_s:
            if self.transaction_id is not None or self.reason is not None:
                raise ValueError(f"{self.type} takes no transaction_id or reason")
        else:
            self._check_fields()
        if self.to_user_id is not None or self.type is CommandType.TRANSFER:
            self._transfer_fields()
        named = self.costs is not None or self.grants is not None or self.sku is not None
        if named or self.type is CommandType.PURCHASE:
            self._purchase_fields()
        if self.idempotency_key.startswith(_RESERVED_KEY_PREFIXES) or self.type in INTERNAL_TYPES:
            self._reserved_key()
        if self.expires_at is not None:
            if self.type not in CREDITS:
                raise ValueError("expires_at is for top_up and bonus only")
            if self.expires_at - self.sent_at > EXPIRES_AT_AHEAD_MAX:
                raise ValueError("expires_at is more than ten years after sent_at")
        return self

    def _check_fields(self) -> None:
        """Each field the type takes, needs or refuses (see _FIELDS); a record-only type is
        no command."""
        if self.type in RECORD_ONLY_TYPES:
            raise ValueError(f"{self.type} is what the ledger records of a purchase: send a "
                             "purchase")  # fmt: skip
        given = (self.amount, self.hold_id, self.expires_in_s, self.transaction_id)
        names = ("amount", "hold_id", "expires_in_s", "transaction_id")
        for name, value, rule in zip(names, given, _FIELDS[self.type], strict=True):
            if rule is None and value is not None:
                raise ValueError(f"{self.type} takes no {name}")
            if rule == "required" and value is None:
                raise ValueError(f"{self.type} requires {name}")
        if (self.reason is None) != (self.type is not CommandType.REVERSE):
            raise ValueError("reason is required for reverse, and for reverse only")

    def _transfer_fields(self) -> None:
        """A transfer names its receiver, another user; no other type names one."""
        if (self.to_user_id is None) != (self.type is not CommandType.TRANSFER):
            raise ValueError("to_user_id is required for transfer, and for transfer only")
        if self.to_user_id == self.user_id:
            raise ValueError("a transfer's to_user_id must be another user")

    def _purchase_fields(self) -> None:
        """A purchase names its costs (the first one its `asset`), grants and sku, each asset
        once; no other type names any (conversion and purchase_grant are records only)."""
        if self.type is not CommandType.PURCHASE:
            raise ValueError("costs, grants and sku are for purchase only")
        if self.costs is None or self.sku is None:
            raise ValueError("a purchase requires costs and sku")
        grants = self.grants or []
        named = [part.asset for part in (*self.costs, *grants)]
        if len(set(named)) != len(named):
            raise ValueError("a purchase names each asset once, across costs and grants")
        if self.costs[0].asset != self.asset:
            raise ValueError("a purchase's asset is its first cost's")
        if grants and len(self.costs) != 1:
            # Why: a grant keeps the paid share of what paid for it, and weighing GOLD against
            # DIAMONDS would need prices, which live with the caller.
            raise ValueError("a purchase with grants (a conversion) has exactly one cost")

    def _reserved_key(self) -> None:
        """The expiry sweep's keys are for expire; a transfer step's key is its prefix and
        the transfer's id, and no other command may use those prefixes."""
        key = self.idempotency_key
        if key.startswith(SWEEP_KEY_PREFIX) and self.type is not CommandType.EXPIRE:
            raise ValueError(f"idempotency keys starting with {SWEEP_KEY_PREFIX!r} are for expire")
        prefix = INTERNAL_KEY_PREFIXES.get(self.type.value)
        if prefix is not None and key != f"{prefix}{self.transaction_id}":
            raise ValueError(f"a {self.type}'s idempotency key is {prefix!r} + transaction_id")
        if key.startswith(PURCHASE_PART_KEY_PREFIX):
            raise ValueError(f"keys starting with {PURCHASE_PART_KEY_PREFIX!r} are for the "
                             "records of a purchase's parts")  # fmt: skip
        if prefix is None and key.startswith(tuple(INTERNAL_KEY_PREFIXES.values())):
            raise ValueError("keys starting with 'transfer-in:' or 'transfer-refund:' are "
                             "for the wallet's own transfer steps")  # fmt: skip

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, object]) -> dict[str, object]:
        if len(value) > METADATA_KEYS_MAX:
            raise ValueError(f"metadata has more than {METADATA_KEYS_MAX} keys")
        if any("\x00" in key for key in value):
            raise ValueError("a metadata key holds a NUL character")
        if len(orjson.dumps(value)) > METADATA_BYTES_MAX:
            raise ValueError(f"metadata is larger than {METADATA_BYTES_MAX} bytes")
        return value

    def encode(self) -> bytes:
        """The wire form: compact JSON."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


def new_command(
    *,
    type: CommandType,
    user_id: str,
    asset: str,
    amount: int | None,
    idempotency_key: str,
    command_id: UUID,
    sent_at: datetime,
    description: str | None = None,
    reply_to: str = DEFAULT_REPLIES_TOPIC,
    expires_at: datetime | None = None,
    hold_id: str | None = None,
    expires_in_s: int | None = None,
    transaction_id: UUID | None = None,
    reason: str | None = None,
    to_user_id: str | None = None,
    costs: list[Part] | None = None,
    grants: list[Part] | None = None,
    sku: str | None = None,
) -> Command:
    """Build a validated command (the Python producer's way in)."""
    return Command(
        command_id=command_id,
        idempotency_key=idempotency_key,
        type=type,
        user_id=user_id,
        asset=asset,
        amount=amount,
        description=description,
        reply_to=reply_to,
        sent_at=sent_at,
        expires_at=expires_at,
        hold_id=hold_id,
        expires_in_s=expires_in_s,
        transaction_id=transaction_id,
        reason=reason,
        to_user_id=to_user_id,
        costs=costs,
        grants=grants,
        sku=sku,
    )
