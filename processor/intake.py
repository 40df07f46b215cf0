"""Admission of a consumed record: decode it and check it is routed where its user lives.

Why the routing checks: the single-writer rule (one partition owns a user) only holds if every
producer keys by user id and partitions with Kafka's default murmur2 partitioner. A record
whose key is not its user id, or that sits on another partition, would let two workers hold
two different balances for one user; it is refused instead of processed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ledger.plan import Intake, payload_hash
from messaging.kafka import partition_for
from schemas.codec import DecodeFailure, Envelope, decode_command
from schemas.commands import Command
from schemas.dead_letters import DecodeErrorCode


@dataclass(frozen=True, slots=True)
class IntakeRules:
    partitions: int
    command_bytes_max: int
    forbidden_reply_topics: frozenset[str]
    reply_topic_patterns: tuple[str, ...] = ()  # empty: any topic (WALLET_REPLY_TOPICS)


def admit(
    rules: IntakeRules, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> Intake:
    decoded = decode_command(value, bytes_max=rules.command_bytes_max)
    if isinstance(decoded, Command):
        refusal = _misrouted(rules, decoded, partition, key)
        if refusal is not None:
            return Intake(offset, key, value, refusal, None)
        return Intake(offset, key, value, decoded, payload_hash(decoded))
    return Intake(offset, key, value, decoded, None)


def _misrouted(
    rules: IntakeRules, command: Command, partition: int, key: bytes | None
) -> DecodeFailure | None:
    reason = _forbidden_reply_to(rules, command.reply_to)
    if reason is not None:
        return DecodeFailure(
            DecodeErrorCode.FORBIDDEN_REPLY_TOPIC,
            reason,
            Envelope(command_id=str(command.command_id)),
        )
    if key != command.user_id.encode("utf-8"):
        reason = "the message key must be the user id (UTF-8)"
        return DecodeFailure(DecodeErrorCode.KEY_MISMATCH, reason, envelope_of(command))
    expected = partition_for(command.user_id, rules.partitions)
    if expected != partition:
        reason = (
            f"user {command.user_id!r} belongs on partition {expected} (murmur2), not {partition}; "
            "use the default (murmur2) partitioner"
        )
        return DecodeFailure(DecodeErrorCode.WRONG_PARTITION, reason, envelope_of(command))
    return None


def _forbidden_reply_to(rules: IntakeRules, reply_to: str) -> str | None:
    if reply_to in rules.forbidden_reply_topics:
        return f"reply_to {reply_to!r} is one of the wallet's own input topics"
    patterns = rules.reply_topic_patterns
    if patterns and not any(fnmatch.fnmatchcase(reply_to, p) for p in patterns):
        return f"reply_to {reply_to!r} is not among the allowed reply topics (WALLET_REPLY_TOPICS)"
    return None


def envelope_of(command: Command) -> Envelope:
    """What a refusal's reply needs of a command."""
    return Envelope(
        command_id=str(command.command_id),
        reply_to=command.reply_to,
        user_id=command.user_id,
        idempotency_key=command.idempotency_key,
    )
