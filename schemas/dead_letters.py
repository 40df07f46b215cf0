"""What `wallet.commands.dlq` holds: the undecodable message and why it was refused."""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict


class DecodeErrorCode(StrEnum):
    """Why a message on the commands topic was dead-lettered instead of processed."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_FIELDS = "invalid_fields"
    KEY_MISMATCH = "key_mismatch"
    WRONG_PARTITION = "wrong_partition"
    FORBIDDEN_REPLY_TOPIC = "forbidden_reply_topic"
    # A valid command the ledger kept refusing: narrowed down to this record and set aside.
    UNPROCESSABLE = "unprocessable"
    # An operator named this record (`wallet dead-letter`); its reason says who and why.
    OPERATOR_DEAD_LETTERED = "operator_dead_lettered"
    # Not a command but its reply: reply_to names a topic that does not exist or refuses the
    # wallet. `value` is the reply, `source_*` the command it answers.
    REPLY_UNDELIVERABLE = "reply_undeliverable"
    # A transfer step (transfer_in, transfer_refund) that names no transfer it could be a
    # step of: forged, or sent by hand (ledger.transfers says why it is not recorded).
    UNKNOWN_TRANSFER = "unknown_transfer"


class DeadLetter(BaseModel):
    """A refused message. `value` is the original text (or base64 when not UTF-8), truncated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: DecodeErrorCode
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None
    value: str
    value_encoding: str  # "utf-8" or "base64"
    value_bytes: int  # size of the original message value
    truncated: bool
    refused_at: AwareDatetime
