"""Reading a partition's records: decoded, or set aside with the reason a reader of the
dead-letter topic needs."""

from __future__ import annotations

from aiokafka import TopicPartition

from messaging.kafka import partition_for
from processor.reader import RecordReader
from schemas.codec import DecodeFailure
from schemas.commands import Command
from schemas.dead_letters import DecodeErrorCode
from tests.unit.standins import CONFIG, PARTITIONS, TOPIC, records

P1 = TopicPartition(TOPIC, 1)


class TestRead:
    def test_a_record_is_decoded(self) -> None:
        """An ordinary record becomes its command."""
        [record] = records(P1, 0, [5])
        assert isinstance(RecordReader(CONFIG.rules, 1).read(record).admitted, Command)

    def test_an_operators_record_is_not_decoded(self) -> None:
        """A record an operator dead-lettered becomes a dead letter with the operator's reason."""
        reader = RecordReader(CONFIG.rules, 1)
        reader.forced = {0: "poison pill"}
        [record] = records(P1, 0, [5])
        failure = reader.read(record).admitted
        assert isinstance(failure, DecodeFailure)
        assert failure.code is DecodeErrorCode.OPERATOR_DEAD_LETTERED
        assert failure.reason == "dead-lettered by an operator: poison pill"


class TestSetAside:
    def test_set_aside_keeps_the_envelope_unless_bare(self) -> None:
        """A set-aside record keeps its command id (so its sender gets a reply), unless bare."""
        [record] = records(P1, 0, [5])
        reader = RecordReader(CONFIG.rules, 1)
        kept, bare = reader.set_aside(record, "why", False), reader.set_aside(record, "why", True)
        assert isinstance(kept.admitted, DecodeFailure) and isinstance(bare.admitted, DecodeFailure)
        assert kept.admitted.code is DecodeErrorCode.UNPROCESSABLE
        assert kept.admitted.envelope.command_id is not None
        assert bare.admitted.envelope.command_id is None

    def test_the_control_is_a_command_of_this_partition(self) -> None:
        """The control command is a top-up of 1 by a user the partitioner sends here."""
        control = RecordReader(CONFIG.rules, 1).control("GOLD", 7)
        assert isinstance(control.admitted, Command) and control.offset == 7
        assert partition_for(control.admitted.user_id, PARTITIONS) == 1
