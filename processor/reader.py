"""A partition's records as intakes: decoded and checked (processor.intake), or set aside
unprocessed, by an operator (`wallet dead-letter`) or by the narrowing after a record failed
alone too often (processor.narrowing); and the control command a set-aside is tried against."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from ledger.plan import Intake, decoded_intakes
from messaging.kafka import partition_for
from processor.intake import IntakeRules, admit, envelope_of
from schemas.codec import DecodeFailure, Envelope
from schemas.commands import Command, CommandType
from schemas.dead_letters import DecodeErrorCode


class RecordReader:
    """Reads one partition's records (see the module docstring)."""

    def __init__(self, rules: IntakeRules, partition: int) -> None:
        self._rules = rules
        self._partition = partition
        self.forced: Mapping[int, str] = {}  # offset -> why an operator dead-letters it

    def decode(self, record: ConsumerRecord) -> Intake:
        return admit(self._rules, self._partition, record.offset, record.key, record.value)

    def read(self, record: ConsumerRecord) -> Intake:
        """The record decoded, unless an operator set it aside."""
        forced = self.forced.get(record.offset)
        if forced is None:
            return self.decode(record)
        # Not decoded at all: whatever in it stalled the partition is not touched again.
        reason = f"dead-lettered by an operator: {forced}"
        failure = DecodeFailure(DecodeErrorCode.OPERATOR_DEAD_LETTERED, reason, Envelope())
        return Intake(record.offset, record.key, record.value, failure, None)

    def set_aside(self, record: ConsumerRecord, reason: str, bare: bool) -> Intake:
        """The record as a dead letter for `reason`; `bare`: without its envelope (no reply),
        since what the envelope holds may be what the database refuses."""
        if record.offset in self.forced:
            return self.read(record)  # the operator's reason
        intake = self.decode(record)
        envelope = Envelope()
        if not bare:
            admitted = intake.admitted
            envelope = envelope_of(admitted) if isinstance(admitted, Command) else admitted.envelope
        failure = DecodeFailure(DecodeErrorCode.UNPROCESSABLE, reason, envelope)
        return Intake(record.offset, record.key, record.value, failure, None)

    def control(self, asset: str, offset: int) -> Intake:
        """A made-up top-up of 1 for a user of this partition, never committed: written and
        rolled back to see whether the database takes an ordinary command right now."""
        command = Command(command_id=uuid.uuid4(), idempotency_key=uuid.uuid4().hex,
                          type=CommandType.TOP_UP, user_id=self._control_user, asset=asset,
                          amount=1, sent_at=datetime.now(UTC))  # fmt: skip
        [intake] = decoded_intakes([command], offset)
        return intake

    @functools.cached_property
    def _control_user(self) -> str:
        """A user id of this partition that no producer uses (a control is never committed)."""
        candidates = (f"wallet-control-{i}" for i in itertools.count())
        partitions = self._rules.partitions
        return next(u for u in candidates if partition_for(u, partitions) == self._partition)
