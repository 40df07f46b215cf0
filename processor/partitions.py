"""The partitions this process owns: a worker each, their health, and every seek made on them.

Every seek goes through `seek` or `seek_to_beginning` and is counted, so that a step knows
which of its fetches a seek made stale (see processor.steps, Steps.step).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from foundation.errors import FencedError
from processor.caps import CapsLookup
from processor.health import Health
from processor.monitors import MonitorsLookup
from processor.outbox import Outbox
from processor.worker import Admitted, AssetCatalog, PartitionWorker, WorkerConfig
from storage.db import RETRIABLE_DB_ERRORS, Failure, failure_kind
from storage.event_store import EventStore

log = structlog.get_logger("wallet.processor")


class Consumer(Protocol):
    """What the processor asks of its Kafka consumer (AIOKafkaConsumer; unit tests give a
    stand-in)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int | None
    ) -> dict[TopicPartition, list[ConsumerRecord]]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def last_stable_offset(self, partition: TopicPartition) -> int | None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]: ...
    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class Partitions:
    """The owned partitions (see the module docstring). Callers hold the processor's lock."""

    def __init__(
        self,
        store: EventStore,
        config: WorkerConfig,
        health: Health,
        consumer: Consumer,
        outbox: Outbox,
    ) -> None:
        self._store = store
        self.assets = AssetCatalog(store)
        self.caps = CapsLookup(store)
        self.monitors = MonitorsLookup(store, config.monitors_reload_ms)
        self._config = config
        self.health = health
        self._consumer = consumer
        self._outbox = outbox
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self.seeks: Counter[TopicPartition] = Counter()  # partition -> seeks made so far

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] += 1
        self._consumer.seek(tp, offset)

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks[tp] += 1
        await self._consumer.seek_to_beginning(tp)

    def refetch(self, tp: TopicPartition) -> None:
        """Fetch again from where the worker stands (records fetched before were dropped)."""
        worker = self.workers.get(tp)
        if worker is not None and not self.health.stale(tp):
            log.info("records fetched across a seek dropped; fetching again",
                     partition=tp.partition, fetch_from=worker.fetch_from)  # fmt: skip
            self.seek(tp, worker.fetch_from)

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in sorted(partitions):
            worker = PartitionWorker(tp, self._store, self.assets, self._config)
            self.workers[tp] = worker
            self._consumer.resume(tp)
            await self.take_over(worker)

    def drop(self, tp: TopicPartition) -> None:
        self.workers.pop(tp, None)
        self.health.forget(tp)
        if tp in self._consumer.assignment():
            self._consumer.pause(tp)

    async def resync_stale(self) -> None:
        for tp in self.health.due():
            worker = self.workers.get(tp)
            if worker is None:
                self.health.forget(tp)
            elif await self.take_over(worker, self.health.failure(tp)):
                self.health.resynced(tp)

    async def take_over(self, worker: PartitionWorker, failure: Failure | None = None) -> bool:
        """Claim the partition, queue its unpublished outbox rows, seek to its position.

        On failure the partition stays stale with a growing backoff (PostgreSQL may be down:
        retrying every step was seen at about 50 claims a second)."""
        try:
            claim = await worker.take_over(failure)
            after = (claim.published_generation, claim.published_offset)
            await self._outbox.submit_backlog(worker.tp.topic, worker.tp.partition,
                                              claim.epoch, after)  # fmt: skip
        except RETRIABLE_DB_ERRORS as exc:
            log.error("could not claim partition", partition=worker.tp.partition, error=repr(exc))
            self.health.failed(worker.tp, failure_kind(exc))
            return False
        self.seek(worker.tp, worker.fetch_from)
        log.info("partition claimed", partition=worker.tp.partition, epoch=claim.epoch,
                 next_offset=claim.next_offset, generation=claim.generation)  # fmt: skip
        return True

    async def reset(self, tp: TopicPartition, reason: str, log_end: int | None) -> None:
        """The partition's log was replaced: record it and start again at its beginning."""
        worker = self.workers.get(tp)
        if worker is None:
            return
        worker.short_since_s = None
        try:
            await worker.reset(reason, log_end)
        except FencedError:
            self.drop(tp)
            return
        except RETRIABLE_DB_ERRORS as exc:
            log.error("could not record partition reset", partition=tp.partition, error=repr(exc))
            self.health.failed(tp, failure_kind(exc))
            return
        await self.seek_to_beginning(tp)

    async def admit(
        self,
        fetched: Mapping[TopicPartition, list[ConsumerRecord]],
        positions: Mapping[TopicPartition, int],
    ) -> list[Admitted]:
        """Each fresh partition's fetched records as a batch (a replaced log is reset)."""
        admitted = []
        for tp, records in fetched.items():
            worker = self.workers.get(tp)
            if worker is None or self.health.stale(tp) or not records:
                continue
            records, position = self._in_order(tp, records, positions[tp])
            reason = worker.last.log_replaced(records)
            if reason is not None:
                await self.reset(tp, reason, self._consumer.highwater(tp))
                continue
            batch = worker.admit(records, position)
            if batch is not None:
                admitted.append(batch)
        return admitted

    def _in_order(
        self, tp: TopicPartition, records: list[ConsumerRecord], position: int
    ) -> tuple[list[ConsumerRecord], int]:
        """The records up to the first whose offset does not grow, and the position after
        them; the consumer fetches again after them.

        Why: the Tansu broker, restarted under load, once served a log holding offset 10
        twice (found by the broker restart test). Kafka never does; but a batch must cover
        an offset range once, so a broken log is cut where it breaks instead of crashing the
        processor on it over and over. What the broker lost that way, producers re-send.
        """
        for i in range(1, len(records)):
            if records[i].offset <= records[i - 1].offset:
                log.error("broker returned offsets out of order; fetching again after them",
                          partition=tp.partition, offset=records[i].offset,
                          after=records[i - 1].offset)  # fmt: skip
                self.seek(tp, records[i - 1].offset + 1)
                return records[:i], records[i - 1].offset + 1
        return records, position
