"""Records taken from the consumer as soon as they arrive, queued for the next step.

Why: aiokafka sends a partition's next fetch request only once its buffered records are
taken. Taken only at the start of a step, the records that arrived while a step committed
(tens of milliseconds) were not even fetched until the step after: a lone command waited about
two steps (measured at 2,000 commands/s: 36 ms from publish to fetch, with 20 ms steps, while
one hop through the broker alone took 4 ms). A task here takes them as they arrive, so aiokafka
fetches again at once, and a step takes everything that arrived while the one before it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition

Fetched = dict[TopicPartition, list[ConsumerRecord]]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Records fetched, each partition's position after them, and the seek counts taken
    right before the fetch began and right after it returned (see processor.steps)."""

    records: Fetched
    positions: dict[TopicPartition, int]
    seeks_before: Counter[TopicPartition]
    seeks_after: Counter[TopicPartition]

    @property
    def size(self) -> int:
        return sum(len(records) for records in self.records.values())


class Prefetch:
    """A bounded queue of fetches, filled by a task of its own (see the module docstring)."""

    def __init__(
        self, fetch: Callable[[int], Awaitable[Fetch | None]], records_max: int, idle_s: float
    ) -> None:
        assert records_max >= 1 and idle_s > 0
        self._fetch = fetch
        self._records_max = records_max  # queued at most: each fetch asks for what is left
        self._idle_s = idle_s  # after a failed fetch (the fetch itself backs off longer)
        self._queue: deque[Fetch] = deque()
        self._queued = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    async def take(self, wait_s: float) -> list[Fetch]:
        """The queued fetches, oldest first (at most records_max records in all); waits up to
        `wait_s` for one when none is queued."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prefetch")
        if not self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)
        if self._task.done():
            await self._task  # raises what ended it
            raise AssertionError("the prefetch task ended")
        taken = list(self._queue)
        assert sum(fetch.size for fetch in taken) == self._queued <= self._records_max
        self._queue.clear()
        self._queued = 0
        self._arrived.clear()
        self._room.set()
        return taken

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._room.wait()
            fetch = await self._fetch(self._records_max - self._queued)
            if fetch is None:
                await asyncio.sleep(self._idle_s)  # never a busy loop on a fetch that fails
                continue
            if not fetch.records:
                continue  # the fetch waited fetch_wait_ms for nothing
            assert fetch.size <= self._records_max - self._queued, "fetched past the bound"
            self._queue.append(fetch)
            self._queued += fetch.size
            self._arrived.set()
            if self._queued >= self._records_max:
                self._room.clear()
