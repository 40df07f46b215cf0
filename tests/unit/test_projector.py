"""The projector's loop on the in-memory stores: it follows every partition, and a partition
whose steps fail is retried on its own while the others go on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from projections.projector import Projector
from storage.memory_event_store import MemoryEventStore
from storage.memory_projection_store import MemoryProjectionStore
from storage.projection_store import BATCH_ENTRIES_MAX, LIVE, Applied, Target
from tests.contract.batches import planned_batch

TOPIC = "unit.commands"


class _BrokenPartition(MemoryProjectionStore):
    """Fails every step of one partition, as entries a column cannot hold would."""

    def __init__(self, ledger: MemoryEventStore, broken: int) -> None:
        super().__init__(ledger)
        self.broken = broken

    async def apply_next(
        self, target: Target, partition: int, after: int, limit: int = BATCH_ENTRIES_MAX
    ) -> Applied:
        if partition == self.broken:
            raise ValueError("numeric field overflow")
        return await super().apply_next(target, partition, after, limit)


async def _top_up(ledger: MemoryEventStore, partition: int, user: str, amount: int) -> None:
    claim = await ledger.claim_partition(TOPIC, partition, "owner")
    await ledger.commit_batch(*await planned_batch(
        ledger, TOPIC, partition, claim.epoch, claim.next_offset, [amount], user=user
    ))  # fmt: skip


async def _run_until(projector: Projector, done: Callable[[], bool]) -> None:
    """Run the projector until `done()` holds (at most 5 s), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        for _ in range(500):
            if done():
                break
            await asyncio.sleep(0.01)
        assert done(), "the projector did not get there in 5 s"
    finally:
        stop.set()
        await task


class TestFollowing:
    async def test_every_partition_is_projected(self) -> None:
        """Entries of each claimed partition reach the balances; health lists no failure."""
        ledger = MemoryEventStore()
        store = MemoryProjectionStore(ledger)
        await _top_up(ledger, 0, "ana", 5)
        await _top_up(ledger, 3, "bob", 9)
        projector = Projector(store)
        await _run_until(projector, lambda: projector.health() is not None)
        assert await store.balances(LIVE, "ana") == {"GOLD": (5, 5, 0, 0)}
        assert await store.balances(LIVE, "bob") == {"GOLD": (9, 9, 0, 0)}
        assert projector.health() == {"partitions": 2, "failing": []}


class TestFailingPartition:
    async def test_one_partition_failing_holds_up_no_other(self) -> None:
        """A partition whose steps fail is recorded as failing (for /ready) and retried with a
        backoff, while the other partition is projected."""
        ledger = MemoryEventStore()
        store = _BrokenPartition(ledger, broken=0)
        await _top_up(ledger, 0, "ana", 5)
        await _top_up(ledger, 1, "bob", 9)
        projector = Projector(store)
        await _run_until(projector, lambda: (LIVE.checkpoint, 0) in store.failures)
        assert await store.balances(LIVE, "bob") == {"GOLD": (9, 9, 0, 0)}
        assert await store.balances(LIVE, "ana") == {}
        failure = store.failures[(LIVE.checkpoint, 0)]
        assert failure.count >= 1 and failure.error == "ValueError"
        health = projector.health()
        assert health is not None and health["failing"] == [0]

    async def test_a_partition_recovers_once_its_steps_pass(self) -> None:
        """Once the cause is gone, the failing partition is projected and its failure cleared."""
        ledger = MemoryEventStore()
        store = _BrokenPartition(ledger, broken=0)
        await _top_up(ledger, 0, "ana", 5)
        projector = Projector(store)
        await _run_until(projector, lambda: (LIVE.checkpoint, 0) in store.failures)
        store.broken = -1
        await _run_until(projector, lambda: (LIVE.checkpoint, 0) not in store.failures)
        assert await store.balances(LIVE, "ana") == {"GOLD": (5, 5, 0, 0)}
        assert projector.health() == {"partitions": 1, "failing": []}
