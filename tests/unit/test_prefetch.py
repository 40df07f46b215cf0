"""The prefetch queue: fetches are taken in order and bounded, the fetching task waits while
the queue is full, a failing fetch never spins, and a broken one surfaces in take."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka import TopicPartition

from processor.prefetch import Fetch, Prefetch
from tests.unit.standins import TOPIC, records

P0 = TopicPartition(TOPIC, 0)


def _fetch(first: int, count: int) -> Fetch:
    return Fetch({P0: records(P0, first, [1] * count)}, {P0: first + count}, Counter(), Counter())


class _Script:
    """Hands out the scripted fetches one call at a time, then waits (an idle broker)."""

    def __init__(self, *fetches: Fetch | None) -> None:
        self.fetches = list(fetches)
        self.calls = 0
        self.asked: list[int] = []  # records_max of each call

    async def __call__(self, records_max: int) -> Fetch | None:
        self.calls += 1
        self.asked.append(records_max)
        if not self.fetches:
            await asyncio.sleep(3600)
        return self.fetches.pop(0)


class TestTake:
    async def test_fetches_come_in_order_each_asking_for_what_is_left(self) -> None:
        """Queued fetches are taken oldest first; each fetch asks for no more records than
        the bound leaves, so a step never takes more than records_max."""
        script = _Script(_fetch(0, 3), _fetch(3, 2), _fetch(5, 4), _fetch(9, 1))
        prefetch = Prefetch(script, 5, 0.01)
        first = await prefetch.take(0.05)
        await asyncio.sleep(0.01)
        second = await prefetch.take(0.05)
        assert [f.size for f in first] == [3, 2] and [f.size for f in second] == [4, 1]
        assert script.asked[:4] == [5, 2, 5, 1]
        prefetch.close()

    async def test_nothing_queued_waits_then_returns_empty(self) -> None:
        """With nothing fetched, take waits its time and returns no fetch."""
        prefetch = Prefetch(_Script(), 10, 0.01)
        assert await prefetch.take(0.02) == []
        prefetch.close()


class TestBounds:
    async def test_a_full_queue_stops_fetching_until_taken(self) -> None:
        """Once records_max records are queued, no fetch is made until some are taken."""
        script = _Script(_fetch(0, 5), _fetch(5, 5), _fetch(10, 5))
        prefetch = Prefetch(script, 5, 0.01)
        [first] = await prefetch.take(0.05)
        assert first.positions[P0] == 5
        await asyncio.sleep(0.05)
        assert script.calls == 2, "fetched again while the queue was full"
        [second] = await prefetch.take(0.05)
        assert second.positions[P0] == 10
        await asyncio.sleep(0.05)
        assert script.calls == 3
        prefetch.close()

    async def test_a_failing_fetch_backs_off(self) -> None:
        """A fetch that fails at once (None) is retried after the idle pause, not in a loop."""
        script = _Script(*([None] * 1000))
        prefetch = Prefetch(script, 5, 0.02)
        await prefetch.take(0.1)
        assert script.calls <= 8
        prefetch.close()


class TestFailures:
    async def test_a_broken_fetch_surfaces_in_take(self) -> None:
        """An exception that ends the fetching task is raised by the next take."""

        async def broken(records_max: int) -> Fetch | None:
            raise RuntimeError("bug")

        prefetch = Prefetch(broken, 5, 0.01)
        with pytest.raises(RuntimeError, match="bug"):
            await prefetch.take(0.01)
            await asyncio.sleep(0.01)
            await prefetch.take(0.01)
