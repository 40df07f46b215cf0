"""The projection store's contract: every implementation (PostgreSQL, memory) projects the same
ledger into the same balances and totals, exactly once. Each test runs against both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from foundation.settings import Settings
from storage.db import create_pool
from storage.event_store import EventStore, PostgresEventStore
from storage.memory_event_store import MemoryEventStore
from storage.memory_projection_store import MemoryProjectionStore
from storage.projection_store import LIVE, REPLAY, PostgresProjectionStore, ProjectionStore
from tests.contract.batches import planned_batch

TOPIC = "contract.commands"
Stores = tuple[EventStore, ProjectionStore]


@pytest.fixture
async def stores(database: Settings | None) -> AsyncIterator[Stores]:
    """An event store and the projection store that follows its ledger."""
    if database is None:
        ledger = MemoryEventStore()
        yield ledger, MemoryProjectionStore(ledger)
        return
    pool = await create_pool(database)
    try:
        yield PostgresEventStore(pool, 10.0), PostgresProjectionStore(pool)
    finally:
        await pool.close()


async def _commit(events: EventStore, partition: int, user: str, amounts: list[int]) -> None:
    """A claim of `partition`, then one batch of `user`'s commands from its stored offset."""
    claim = await events.claim_partition(TOPIC, partition, "owner")
    first = claim.next_offset
    await events.commit_batch(
        *await planned_batch(events, TOPIC, partition, claim.epoch, first, amounts, user=user)
    )


async def _project_all(projections: ProjectionStore, partition: int) -> int:
    """Apply `partition` until it is caught up, two entries a call; return entries applied."""
    applied, position = 0, await projections.checkpoint(LIVE, partition)
    while True:
        result = await projections.apply_next(LIVE, partition, position, limit=2)
        assert result.position is not None
        if result.count == 0:
            return applied
        applied, position = applied + result.count, result.position


class TestApply:
    async def test_balances_and_totals_follow_the_ledger(self, stores: Stores) -> None:
        """Projected in small steps, each user's balance is its last entry's and each system
        account's total the sum of its entries."""
        events, projections = stores
        await _commit(events, 0, "ana", [10, 5, -3])
        await _commit(events, 1, "bob", [7])
        assert await projections.known_partitions() == [0, 1]
        assert await _project_all(projections, 0) == 6 and await _project_all(projections, 1) == 2
        assert await projections.balances(LIVE, "ana") == {"GOLD": (12, 12, 0, 0)}
        assert await projections.balances(LIVE, "bob") == {"GOLD": (7, 7, 0, 0)}
        assert await projections.totals(LIVE) == {("GOLD", "treasury"): -22, ("GOLD", "revenue"): 3}

    async def test_a_target_is_projected_on_its_own(self, stores: Stores) -> None:
        """Projecting the live target leaves the replay target's checkpoint and rows alone."""
        events, projections = stores
        await _commit(events, 0, "ana", [4])
        await _project_all(projections, 0)
        assert await projections.checkpoint(REPLAY, 0) == 0
        assert await projections.balances(REPLAY, "ana") == {}


class TestCheckpoint:
    async def test_a_stale_position_applies_nothing(self, stores: Stores) -> None:
        """A caller whose position another writer moved is told so (position None), and no
        entry is applied twice."""
        events, projections = stores
        await _commit(events, 0, "ana", [10])
        first = await projections.apply_next(LIVE, 0, 0)
        again = await projections.apply_next(LIVE, 0, 0)
        assert first.count == 2 and first.position is not None
        assert (again.count, again.position) == (0, None)
        await _commit(events, 0, "ana", [1])
        stale = await projections.apply_next(LIVE, 0, 0)
        assert (stale.count, stale.position) == (0, None)
        assert await projections.balances(LIVE, "ana") == {"GOLD": (10, 10, 0, 0)}
        assert await projections.totals(LIVE) == {("GOLD", "treasury"): -10}

    async def test_caught_up_is_no_lag(self, stores: Stores) -> None:
        """A partition with entries not projected has lag; once caught up it has none."""
        events, projections = stores
        await _commit(events, 0, "ana", [10])
        assert (await projections.lag_by_partition(LIVE))[0] > 0
        await _project_all(projections, 0)
        assert await projections.lag_by_partition(LIVE) == {0: 0.0}
