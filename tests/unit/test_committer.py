"""Committing on the in-memory event store: healthy partitions share one transaction, a fenced
partition is dropped, a moved offset is resynced, and a failed batch is retried alone with a
backoff, nothing skipped."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import TopicPartition

from ledger.plan import BatchPlan
from processor.committer import Committer
from processor.health import Health
from processor.partitions import Partitions
from storage.event_store import BatchPosition
from tests.contract.batches import planned_batch
from tests.unit.standins import (
    CONFIG,
    TOPIC,
    Clock,
    ConsumerStandIn,
    FlakyStore,
    OutboxStandIn,
    records,
    user_on,
)

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class _CountingStore(FlakyStore):
    """Records how many batches each transaction tried held."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[int] = []

    async def commit_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None:
        self.groups.append(len(batches))
        await super().commit_batches(batches)


class _Setup:
    def __init__(self, store: _CountingStore) -> None:
        self.store, self.clock = store, Clock()
        self.consumer, self.outbox = ConsumerStandIn(assigned={P0, P1}), OutboxStandIn()
        health = Health(backoff_max_s=5.0, clock=self.clock)
        self.partitions = Partitions(store, CONFIG, health, self.consumer, self.outbox)
        self.committer = Committer(store, self.partitions, self.outbox)

    async def step(self, first: int, amounts: list[int]) -> None:
        """One step's worth: resync what is due, admit both partitions' records, commit."""
        await self.partitions.resync_stale()
        fetched = {tp: records(tp, first, amounts) for tp in (P0, P1)}
        positions = dict.fromkeys(fetched, first + len(amounts))
        await self.committer.commit_all(await self.partitions.admit(fetched, positions))


async def _setup() -> _Setup:
    setup = _Setup(_CountingStore())
    await setup.partitions.assign([P0, P1])
    return setup


class TestTogether:
    async def test_healthy_partitions_share_one_transaction(self) -> None:
        """Two partitions' batches are committed in one transaction and handed to the relay
        with their replies."""
        setup = await _setup()
        await setup.step(0, [5, 7])
        assert setup.store.groups == [2]
        assert sorted((j.partition, len(j.messages)) for j in setup.outbox.jobs) == [(0, 2), (1, 2)]
        assert setup.store.partition(TOPIC, 0).next_offset == 2


class TestRefusals:
    async def test_a_fenced_partition_is_dropped_and_the_other_resynced(self) -> None:
        """When another owner claimed one partition, the group's transaction is refused: that
        partition is dropped and paused, the other fetched again from storage."""
        setup = await _setup()
        await setup.store.claim_partition(TOPIC, 0, "another owner")
        await setup.step(0, [5])
        assert list(setup.partitions.workers) == [P1] and setup.consumer.paused == {P0}
        assert setup.partitions.health.stale(P1) and setup.outbox.jobs == []
        setup.clock.now_s += 1
        await setup.step(0, [5])
        assert setup.store.partition(TOPIC, 1).next_offset == 1

    async def test_a_moved_offset_is_resynced_from_storage(self) -> None:
        """A batch that does not start at the stored offset (an earlier commit whose answer
        was lost did commit) is refused as stale; the partition is claimed again and the
        consumer sent back to the last stored record."""
        setup = await _setup()
        epoch = setup.store.partition(TOPIC, 0).epoch
        await setup.store.commit_batch(
            *await planned_batch(setup.store, TOPIC, 0, epoch, 0, [3], user=user_on(0))
        )
        await setup.step(0, [5])
        assert setup.partitions.health.stale(P0)
        assert setup.store.partition(TOPIC, 1).next_offset == 0, "the group rolled back whole"
        setup.clock.now_s += 1
        await setup.partitions.resync_stale()
        assert not setup.partitions.health.stale(P0)
        assert (0, 0) in setup.consumer.seeks[-2:]  # the last processed record, checked again


class TestFailures:
    async def test_a_failed_batch_is_retried_alone_after_a_backoff(self) -> None:
        """Storage down fails the group; nothing moves, each partition is retried after its
        backoff, and alone (it failed recently) until it commits."""
        setup = await _setup()
        setup.store.down = True
        await setup.step(0, [5])
        assert setup.partitions.health.failing(P0) and setup.store.groups == [2]
        assert setup.store.partition(TOPIC, 0).next_offset == 0 and setup.outbox.jobs == []
        setup.store.down = False
        await setup.step(0, [5])
        assert setup.store.groups == [2], "retried before the backoff passed"
        setup.clock.now_s += 10
        await setup.step(0, [5])
        assert setup.store.groups == [2, 1, 1]
        assert not setup.partitions.health.failing(P0)
        assert setup.store.partition(TOPIC, 0).next_offset == 1
