"""The relay's watermarks: stored beside its rounds, the latest per partition, never lost."""

from __future__ import annotations

import asyncio

import pytest

from foundation.settings import Settings
from processor.watermarks import Watermarks
from storage.event_store import PublishedMark
from tests.unit.standins import TOPIC, FlakyStore

SETTINGS = Settings(retry_backoff_max_ms=100)


def _mark(partition: int, epoch: int, upto: int) -> dict[tuple[str, int], PublishedMark]:
    return {(TOPIC, partition): PublishedMark(TOPIC, partition, epoch, 0, upto)}


async def _claimed(store: FlakyStore, partitions: int) -> int:
    """Claim partitions 0.. once each: every one has epoch 1."""
    for partition in range(partitions):
        await store.claim_partition(TOPIC, partition, "me")
    return 1


def _broken_store() -> FlakyStore:
    """A store whose watermark writes fail with a bug (not an outage)."""
    store = FlakyStore()

    async def broken(_: object) -> None:
        raise AssertionError("bug")

    store.mark_published = broken  # type: ignore[method-assign,assignment]
    return store


class TestStoring:
    async def test_the_latest_mark_of_each_partition_is_stored(self) -> None:
        """Marks handed over in several rounds are stored by flush, the highest per partition."""
        store = FlakyStore()
        epoch = await _claimed(store, 2)
        marks = Watermarks(store, SETTINGS)
        marks.published(_mark(0, epoch, 3))
        marks.published(_mark(0, epoch, 7) | _mark(1, epoch, 2))
        await marks.flush()
        claims = [await store.claim_partition(TOPIC, p, "next") for p in (0, 1)]
        assert [c.published_offset for c in claims] == [7, 2]

    async def test_a_database_outage_delays_marks_and_loses_none(self) -> None:
        """While the store is down, marks wait (and later ones join them); once it is back,
        they are stored without any round being sent again."""
        store = FlakyStore()
        epoch = await _claimed(store, 1)
        marks = Watermarks(store, SETTINGS)
        store.down = True
        marks.published(_mark(0, epoch, 4))
        await asyncio.sleep(0.1)
        marks.published(_mark(0, epoch, 9))
        store.down = False
        await asyncio.wait_for(marks.flush(), 5)
        assert (await store.claim_partition(TOPIC, 0, "next")).published_offset == 9


class TestFailures:
    async def test_a_bug_while_storing_is_raised_not_retried(self) -> None:
        """Anything but a storage outage ends the storing task and surfaces on flush."""
        marks = Watermarks(_broken_store(), SETTINGS)
        marks.published(_mark(0, 1, 4))
        with pytest.raises(AssertionError):
            await marks.flush()


class TestClose:
    async def test_close_ends_a_task_still_retrying(self) -> None:
        """With the store down, the storing task retries; close cancels it and returns, and
        the mark is left unstored for the next owner."""
        store = FlakyStore()
        epoch = await _claimed(store, 1)
        marks = Watermarks(store, SETTINGS)
        store.down = True
        marks.published(_mark(0, epoch, 4))
        await asyncio.sleep(0.1)
        storing = [t for t in asyncio.all_tasks() if t.get_name() == "outbox-watermarks"]
        assert len(storing) == 1 and not storing[0].done()
        await asyncio.wait_for(marks.close(), 5)
        assert storing[0].cancelled()
        store.down = False
        assert (await store.claim_partition(TOPIC, 0, "next")).published_offset < 4

    async def test_close_raises_a_bug_that_ended_the_task(self) -> None:
        """A storing task ended by a bug is not swallowed by close."""
        marks = Watermarks(_broken_store(), SETTINGS)
        marks.published(_mark(0, 1, 4))
        await asyncio.sleep(0.05)
        with pytest.raises(AssertionError):
            await marks.close()
