"""What every sweep of the processor shares (processor.expiry_sweep,
processor.transfer_sweep): a round every interval, each bounded in time, over the partitions
this process owns, publishing commands to the commands topic in record batches.

A failure of the database or the broker is logged and the next round tries again: a sweep's
work is always safe to repeat (its commands are idempotent), and a late round only delays it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from foundation.settings import Settings
from messaging.kafka import RecordBatches
from storage.db import RETRIABLE_DB_ERRORS
from storage.event_store import EventStore

log = structlog.get_logger("wallet.processor")


class Sweep(ABC):
    """A sweep: `round` finds work in the owned partitions and publishes its commands."""

    def __init__(
        self,
        store: EventStore,
        producer: AIOKafkaProducer,
        settings: Settings,
        owned: Callable[[], Iterable[int]],
    ) -> None:
        self._store = store
        self._producer = producer
        self._settings = settings
        self._owned = owned  # the partitions this process owns now
        self._interval_s = self.interval_s(settings)
        self._timeout_s = settings.kafka_timeout_ms / 1000
        self._partition_counts: dict[str, int] = {}

    async def run(self) -> None:
        """A round every interval, each at most the Kafka timeout; never returns."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.wait_for(self.sweep(), self._timeout_s)
            except (KafkaError, TimeoutError, *RETRIABLE_DB_ERRORS) as exc:
                log.warning("sweep failed; the next round tries again",
                            sweep=type(self).__name__, error=repr(exc))  # fmt: skip

    async def sweep(self) -> int:
        """One round over the owned partitions; how many commands it published."""
        partitions = sorted(self._owned())
        if not partitions:
            return 0
        return await self.round(partitions)

    @staticmethod
    @abstractmethod
    def interval_s(settings: Settings) -> float: ...

    @abstractmethod
    async def round(self, partitions: list[int]) -> int: ...

    def batches(self) -> RecordBatches:
        """Record batches for a round's commands (partitioned as the default partitioner)."""
        return RecordBatches(self._producer, self._partition_counts)
