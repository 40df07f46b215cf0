"""The last processed record: the log is trusted again only once that very record is read
back at its offset."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from processor.last_record import LastRecord, fingerprint
from tests.unit.standins import TOPIC, records

P0 = TopicPartition(TOPIC, 0)


def _after_claim() -> tuple[LastRecord, list[ConsumerRecord]]:
    """A record at offset 2 processed by the previous owner, and the log as it is."""
    log = records(P0, 0, [1, 1, 1, 1])
    last = LastRecord()
    last.claimed(2, fingerprint(log[2]), 3)
    return last, log


class TestCheck:
    def test_the_same_record_continues_the_log(self) -> None:
        """The processed record read back at its offset: not replaced, and dropped from what
        is admitted; the fetch starts there until then."""
        last, log = _after_claim()
        assert last.verifying and last.fetch_from(3) == 2
        assert last.log_replaced(log[2:]) is None
        assert [r.offset for r in last.checked(log[2:])] == [3]
        assert not last.verifying and last.fetch_from(3) == 3

    def test_another_record_there_means_replaced(self) -> None:
        """A different record at the offset is a replaced log."""
        last, _ = _after_claim()
        other = records(P0, 2, [9])
        assert last.log_replaced(other) == "record 2 is not the record processed at that offset"

    def test_a_gone_record_means_replaced(self) -> None:
        """A log continuing at a later offset lost the record: replaced."""
        last, log = _after_claim()
        assert last.log_replaced(log[3:]) == "record 2 is gone: the log continues at 3"

    def test_nothing_processed_nothing_to_check(self) -> None:
        """Before the first batch there is no record to verify."""
        last = LastRecord()
        last.claimed(None, None, 0)
        assert not last.verify_again() and last.log_replaced(records(P0, 0, [1])) is None
