"""The owned partitions on the in-memory event store: rebalances claim and seek, a claim that
fails leaves its partition stale with a backoff, and only fresh partitions' records are
admitted."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from processor.health import Health
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

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def _partitions(
    store: FlakyStore, clock: Clock | None = None
) -> tuple[Partitions, ConsumerStandIn, OutboxStandIn]:
    consumer, outbox = ConsumerStandIn(assigned={P0, P1}), OutboxStandIn()
    health = Health(backoff_max_s=5.0, clock=clock or Clock())
    return Partitions(store, CONFIG, health, consumer, outbox), consumer, outbox


async def _commit_one(store: FlakyStore, tp: TopicPartition, offsets: int) -> list[ConsumerRecord]:
    """A previous owner's batch of `offsets` records from offset 0, committed; returns the
    log: those records and one more."""
    log = records(tp, 0, [1] * (offsets + 1))
    partitions, _, _ = _partitions(store)
    await partitions.assign([tp])
    batch = partitions.workers[tp].admit(log[:offsets], offsets)
    assert batch is not None
    known = await store.find_processed(batch.ids)
    plan = partitions.workers[tp].plan(batch, known, {}, await store.load_assets())
    await store.commit_batch(batch.position, plan)
    return log


class TestAssign:
    async def test_each_partition_is_claimed_and_positioned(self) -> None:
        """An assigned partition is claimed (a new epoch), its backlog queued, and the consumer
        resumed at the stored offset."""
        store = FlakyStore()
        partitions, consumer, outbox = _partitions(store)
        consumer.paused.add(P0)
        await partitions.assign([P1, P0])
        assert sorted(partitions.workers) == [P0, P1]
        assert outbox.backlogs == [(0, 1), (1, 1)]
        assert consumer.seeks == [(0, 0), (1, 0)] and not consumer.paused

    async def test_a_new_owner_reads_the_last_processed_record_again(self) -> None:
        """After another owner committed offsets 0..2, the claim seeks to offset 2 (to check
        that record is still the one processed), and admits only what follows it."""
        store = FlakyStore()
        log = await _commit_one(store, P0, 3)
        partitions, consumer, _ = _partitions(store)
        await partitions.assign([P0])
        assert consumer.seeks == [(0, 2)]
        [batch] = await partitions.admit({P0: log[2:]}, {P0: 4})
        assert [i.offset for i in batch.intakes] == [3]

    async def test_another_record_there_means_the_log_was_replaced(self) -> None:
        """When the record at the last processed offset is not the one processed, the
        partition is reset (a new generation) and read again from the log's beginning."""
        store = FlakyStore()
        await _commit_one(store, P0, 3)
        partitions, consumer, _ = _partitions(store)
        await partitions.assign([P0])
        assert await partitions.admit({P0: records(P0, 2, [1, 1])}, {P0: 4}) == []
        assert store.partition(TOPIC, 0).generation == 1
        assert consumer.seeks == [(0, 2), (0, 0)]


class TestRevoke:
    async def test_a_dropped_partition_is_paused_and_forgotten(self) -> None:
        """Dropping a partition pauses it and forgets its worker and health."""
        partitions, consumer, _ = _partitions(FlakyStore())
        await partitions.assign([P0])
        partitions.health.failed(P0, "boom")
        partitions.drop(P0)
        assert partitions.workers == {} and consumer.paused == {P0}
        assert not partitions.health.failing(P0)


class TestClaimFailures:
    async def test_a_failed_claim_is_retried_after_its_backoff(self) -> None:
        """With storage down, a claim fails and the partition stays stale: no claim is tried
        again before its backoff has passed, and once storage is back the claim seeks."""
        store, clock = FlakyStore(), Clock()
        partitions, consumer, _ = _partitions(store, clock)
        store.down = True
        await partitions.assign([P0])
        assert partitions.health.stale(P0) and consumer.seeks == []
        store.down = False
        await partitions.resync_stale()
        assert store.claims == 0, "retried before the backoff passed"
        clock.now_s += 10
        await partitions.resync_stale()
        assert store.claims == 1 and not partitions.health.stale(P0)
        assert consumer.seeks == [(0, 0)]


class TestAdmit:
    async def test_a_stale_partition_admits_nothing(self) -> None:
        """Records of a partition waiting for its resync are not used."""
        partitions, _, _ = _partitions(FlakyStore())
        await partitions.assign([P0, P1])
        partitions.health.refetch(P0)
        admitted = await partitions.admit(
            {P0: records(P0, 0, [1]), P1: records(P1, 0, [2])}, {P0: 1, P1: 1}
        )
        assert [b.worker.tp for b in admitted] == [P1]

    async def test_offsets_out_of_order_are_cut_where_they_break(self) -> None:
        """A fetch whose offsets stop growing is admitted up to the break, and the consumer
        fetches again after the last good record."""
        partitions, consumer, _ = _partitions(FlakyStore())
        await partitions.assign([P0])
        fetched = records(P0, 0, [1, 1]) + records(P0, 1, [1])
        [batch] = await partitions.admit({P0: fetched}, {P0: 2})
        assert [i.offset for i in batch.intakes] == [0, 1]
        assert consumer.seeks[-1] == (0, 2)
