"""Log ends on the in-memory event store: a log that ends before our position is first checked
by reading the last processed record again, and reset only when that cannot confirm it."""

from __future__ import annotations

from aiokafka import TopicPartition

from processor.health import Health
from processor.log_ends import SHORT_LOG_GRACE_S, LogEnds
from processor.partitions import Partitions
from tests.unit.standins import (
    CONFIG,
    TOPIC,
    Clock,
    ConsumerStandIn,
    FlakyStore,
    OutboxStandIn,
    records,
)

P0 = TopicPartition(TOPIC, 0)


async def _owned(committed: int) -> tuple[FlakyStore, Partitions, ConsumerStandIn, LogEnds, Clock]:
    """Partition 0 owned after `committed` records were committed to it."""
    store, clock = FlakyStore(), Clock()
    consumer = ConsumerStandIn(assigned={P0})
    partitions = Partitions(store, CONFIG, Health(5.0, clock), consumer, OutboxStandIn())
    await partitions.assign([P0])
    if committed:
        worker = partitions.workers[P0]
        batch = worker.admit(records(P0, 0, [1] * committed), committed)
        assert batch is not None
        plan = worker.plan(batch, {}, {}, await store.load_assets())
        await store.commit_batch(batch.position, plan)
        worker.committed(batch, plan)
    return store, partitions, consumer, LogEnds(partitions, consumer, 1.0, clock), clock


class TestShortLog:
    async def test_a_short_log_is_checked_before_it_is_reset(self) -> None:
        """The first sight of a log ending before our position re-reads the last processed
        record; nothing is reset while it may still come back."""
        store, _, consumer, log_ends, clock = await _owned(3)
        consumer.ends[P0] = 1
        await log_ends.check()
        assert consumer.seeks[-1] == (0, 2) and store.partition(TOPIC, 0).generation == 0
        clock.now_s += SHORT_LOG_GRACE_S / 2
        await log_ends.check()
        assert store.partition(TOPIC, 0).generation == 0

    async def test_a_record_that_never_comes_back_resets_the_partition(self) -> None:
        """Past the grace period, a log still short of the checked record is taken as replaced
        and read from its beginning."""
        store, _, consumer, log_ends, clock = await _owned(3)
        consumer.ends[P0] = 1
        await log_ends.check()
        clock.now_s += SHORT_LOG_GRACE_S + 1
        await log_ends.check()
        assert store.partition(TOPIC, 0).generation == 1 and consumer.seeks[-1] == (0, 0)

    async def test_a_log_that_caught_up_is_ours(self) -> None:
        """Once the log's end is past our position again, nothing is reset however long ago
        it was first seen short."""
        store, _, consumer, log_ends, clock = await _owned(3)
        consumer.ends[P0] = 1
        await log_ends.check()
        consumer.ends[P0] = 3
        await log_ends.check()
        consumer.ends[P0], clock.now_s = 1, clock.now_s + SHORT_LOG_GRACE_S + 1
        await log_ends.check()
        assert store.partition(TOPIC, 0).generation == 0

    async def test_nothing_processed_resets_at_once(self) -> None:
        """A partition with no processed record to check is reset at the first short sight."""
        store, partitions, consumer, log_ends, _ = await _owned(0)
        partitions.workers[P0].next_offset = 5  # the stored position, past a replaced log
        consumer.ends[P0] = 2
        await log_ends.check()
        assert store.partition(TOPIC, 0).generation == 1
