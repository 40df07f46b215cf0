"""Decoding of raw command bytes: a Command, or a typed failure that never raises.

Why two parsers: pydantic's strict JSON validation is the contract (ints stay ints, floats and
strings are refused, unknown fields are refused). When it fails we still try to read the
envelope (`command_id`, `reply_to`, ...) with a lenient parser, so the producer gets a reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from foundation.topic_names import DEFAULT_REPLIES_TOPIC, is_topic_name
from schemas.commands import Command
from schemas.dead_letters import DecodeErrorCode

# Reading an envelope out of a refused message costs a parse; past this size we do not try.
ENVELOPE_SCAN_BYTES_MAX = 2 * 1024 * 1024
REASON_CHARS_MAX = 600
_ENVELOPE_TEXT_CHARS_MAX = 128
_UUID_SPELLING_CHARS_MAX = 45  # "urn:uuid:" and 36 characters, the longest UUID spelling


@dataclass(frozen=True, slots=True)
class Envelope:
    """What could still be read from a refused message, to address a reply."""

    # Exactly as the producer wrote it (when it reads as a UUID at all): a refusal's reply
    # carries the producer's own spelling, so a producer matching replies by string finds it.
    command_id: str | None = None
    reply_to: str | None = None
    user_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    code: DecodeErrorCode
    reason: str
    envelope: Envelope


def decode_command(value: bytes | None, *, bytes_max: int) -> Command | DecodeFailure:
    """Decode one message value. Total: returns a Command or a DecodeFailure for any input."""
    if value is None:
        return DecodeFailure(DecodeErrorCode.NOT_JSON, "message has no value", Envelope())
    if len(value) > bytes_max:
        reason = f"message is {len(value)} bytes, the limit is {bytes_max}"
        return DecodeFailure(DecodeErrorCode.TOO_LARGE, reason, read_envelope(value))
    try:
        command = Command.model_validate_json(value)
    except ValidationError as exc:
        return _classify(value, exc)
    repeated = _repeated_key(value, command)
    if repeated is not None:
        reason = f"a JSON object repeats the key {repeated!r}: every key once"
        return DecodeFailure(DecodeErrorCode.INVALID_FIELDS, reason, read_envelope(value))
    return command


# Fields whose JSON value in a valid command is always a string (strict mode: a UUID, an enum
# and a datetime are read from strings only).
_STRING_FIELDS = frozenset({"command_id", "idempotency_key", "type", "user_id", "asset",
                            "reply_to", "sent_at"})  # fmt: skip


def _repeated_key(value: bytes, command: Command) -> str | None:
    """A key some object of this valid command's JSON repeats, or None.

    Why it matters: JSON parsers keep the last of a repeated key, others the first; a gateway
    or signature check reading `"amount": 1` and the ledger reading `"amount": 100000` from
    one message must not both be right. Why counting quotes: a valid command has two objects
    (the command and its metadata) with known strings, so without backslashes (no escaped
    quote, no key spelled two ways) the text holds exactly two quotes per key and per string
    value; a repeated key adds more. That costs a count instead of a second parse; text with
    backslashes takes the exact, slower parse.
    """
    if b"\\" in value:
        return repeated_key(value)
    fields = command.model_fields_set
    optional = (command.description, command.expires_at, command.hold_id,
                command.transaction_id, command.reason, command.to_user_id)  # fmt: skip
    strings = len(fields & _STRING_FIELDS) + sum(v is not None for v in optional)
    metadata = command.metadata
    strings += len(metadata) + sum(isinstance(v, str) for v in metadata.values())
    if value.count(b'"') == 2 * (len(fields) + strings):
        return None
    return repeated_key(value)


def repeated_key(value: bytes | str) -> str | None:
    """A key that some object in this JSON text repeats (the first found), or None. Exact,
    for any JSON text the standard library reads; None for text it cannot read."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen = dict(items)
        if len(seen) != len(items) and not found:
            keys = [k for k, _ in items]
            found.append(next(k for k in keys if keys.count(k) > 1))
        return seen

    try:
        json.loads(value, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


def _classify(value: bytes, exc: ValidationError) -> DecodeFailure:
    kinds = {err["type"] for err in exc.errors()}
    if "json_invalid" in kinds:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf_exc:
            return DecodeFailure(DecodeErrorCode.NOT_UTF8, f"not UTF-8: {utf_exc}", Envelope())
        # JSON that only a lenient parser reads (a lone UTF-16 surrogate such as "\ud800",
        # what splitting an emoji in JavaScript produces): invalid, but its sender is known,
        # so it gets an invalid_command reply rather than vanishing into the dead letters.
        envelope = read_envelope(value)
        if envelope.command_id is not None:
            reason = f"not strict JSON (a lone surrogate, NaN or the like): {_reason(exc)}"
            return DecodeFailure(
                DecodeErrorCode.INVALID_FIELDS, reason[:REASON_CHARS_MAX], envelope
            )
        return DecodeFailure(DecodeErrorCode.NOT_JSON, _reason(exc), Envelope())
    if "model_type" in kinds:
        return DecodeFailure(
            DecodeErrorCode.NOT_AN_OBJECT, "a command is a JSON object", Envelope()
        )
    return DecodeFailure(DecodeErrorCode.INVALID_FIELDS, _reason(exc), read_envelope(value))


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)[:REASON_CHARS_MAX]


def read_envelope(value: bytes) -> Envelope:
    """Best-effort read of the addressing fields; anything malformed is left out."""
    if len(value) > ENVELOPE_SCAN_BYTES_MAX:
        return Envelope()
    doc = _lenient_load(value)
    if not isinstance(doc, dict):
        return Envelope()
    return Envelope(
        command_id=_uuid_or_none(doc.get("command_id")),
        reply_to=_topic_or_none(doc.get("reply_to", DEFAULT_REPLIES_TOPIC)),
        user_id=_text_or_none(doc.get("user_id")),
        idempotency_key=_text_or_none(doc.get("idempotency_key")),
    )


def _lenient_load(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses integers past 64 bits; the standard library reads them.
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _uuid_or_none(raw: object) -> str | None:
    if not isinstance(raw, str) or len(raw) > _UUID_SPELLING_CHARS_MAX:
        return None
    try:
        UUID(raw)
    except ValueError:
        return None
    return raw


def _topic_or_none(raw: object) -> str | None:
    return raw if isinstance(raw, str) and is_topic_name(raw) else None


def _text_or_none(raw: object) -> str | None:
    """Text fit to echo in a reply: bounded, no NUL, and encodable (a lone surrogate from a
    lenient parse would make the reply itself unencodable and fail the batch)."""
    if not isinstance(raw, str) or not 0 < len(raw) <= _ENVELOPE_TEXT_CHARS_MAX or "\x00" in raw:
        return None
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return raw
