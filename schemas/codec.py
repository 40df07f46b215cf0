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

from schemas.commands import Command
from schemas.dead_letters import DecodeErrorCode
from schemas.topics import DEFAULT_REPLIES_TOPIC, is_topic_name

# Reading an envelope out of a refused message costs a parse; past this size we do not try.
ENVELOPE_SCAN_BYTES_MAX = 2 * 1024 * 1024
REASON_CHARS_MAX = 600
_ENVELOPE_TEXT_CHARS_MAX = 128


@dataclass(frozen=True, slots=True)
class Envelope:
    """What could still be read from a refused message, to address a reply."""

    command_id: UUID | None = None
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
        return Command.model_validate_json(value)
    except ValidationError as exc:
        return _classify(value, exc)


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


def _uuid_or_none(raw: object) -> UUID | None:
    if not isinstance(raw, str):
        return None
    try:
        return UUID(raw)
    except ValueError:
        return None


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
