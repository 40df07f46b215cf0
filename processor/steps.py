"""One step of the processor: fetch what is ready, then admit, commit and report it, under the
lock that rebalances take too (so a step never sees a partition half assigned)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from foundation import metrics
from foundation.settings import Settings
from processor.committer import Committer
from processor.crash_points import CrashPoint
from processor.health import RESYNC_BACKOFF_START_S, Health
from processor.lag import LagReport
from processor.log_ends import LogEnds
from processor.outbox import Outbox
from processor.partitions import Consumer, Partitions
from processor.prefetch import Fetch, Fetched, Prefetch
from processor.worker import WorkerConfig
from storage.event_store import EventStore

log = structlog.get_logger("wallet.processor")


class Steps:
    """The processor's steps and rebalances over its parts (see docs/architecture.md)."""

    def __init__(
        self,
        store: EventStore,
        config: WorkerConfig,
        settings: Settings,
        consumer: Consumer,
        outbox: Outbox,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._fetch_wait_ms = settings.fetch_wait_ms
        self._lock = asyncio.Lock()
        # failures in a row, backoff and staleness of each owned partition
        health = Health(settings.retry_backoff_max_ms / 1000, clock)
        self.partitions = Partitions(store, config, health, consumer, outbox)
        timeout_s = settings.kafka_timeout_ms / 1000
        self.log_ends = LogEnds(self.partitions, consumer, timeout_s, clock)
        crash = CrashPoint.parse(settings.crash_at)
        self.committer = Committer(store, self.partitions, outbox, crash)
        self.lag = LagReport(self.partitions, consumer)
        idle_s = max(settings.fetch_wait_ms, 1) / 1000
        self._prefetch = Prefetch(self._fetch_between_seeks, settings.batch_size_max, idle_s)

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        async with self._lock:
            await self.partitions.assign(partitions)

    async def drop(self, partitions: Iterable[TopicPartition]) -> None:
        async with self._lock:
            for tp in partitions:
                self.partitions.drop(tp)

    async def step(self) -> None:
        """Take what was fetched (see processor.prefetch), then decide and commit what is
        fresh, under the lock rebalances take too.

        Why records fetched around a seek are told by seek counts and not by offsets: the
        fetch that brought them was in flight while a claim, reset or retry moved the
        partition (found by the PostgreSQL outage test: such records, taken as the next batch,
        skipped every record between the stored offset and them). An offset comparison cannot
        tell them from a fetch that starts past a gap: on Kafka, transaction markers, aborted
        records and compaction leave offsets no consumer ever sees.
        """
        fetches = await self._prefetch.take(self._fetch_wait_ms / 1000)
        async with self._lock:
            await self._commit_fresh(fetches)
        await self.lag.commit_offsets()

    def close(self) -> None:
        """Stop fetching (the consumer is about to stop)."""
        self._prefetch.close()

    async def _fetch_between_seeks(self, records_max: int) -> Fetch | None:
        """A fetch, with the partitions' seek counts before it and right after it."""
        before = self.partitions.seeks.copy()
        fetch = await self._fetch(records_max)
        if fetch is None:
            return None
        fetched, positions = fetch
        return Fetch(fetched, positions, before, self.partitions.seeks.copy())

    async def _commit_fresh(self, fetches: list[Fetch]) -> None:
        """Commit the records no seek made stale since their fetch began (see step). In a
        partition a stale fetch makes every later one stale too: a seek came between."""
        partitions = self.partitions
        await partitions.resync_stale()
        await self.log_ends.check()
        seeks = partitions.seeks
        fresh: Fetched = {}
        positions: dict[TopicPartition, int] = {}
        for fetch in fetches:
            for tp, records in fetch.records.items():
                before, after = fetch.seeks_before[tp], fetch.seeks_after[tp]
                if before == seeks[tp]:
                    fresh.setdefault(tp, []).extend(records)
                    positions[tp] = fetch.positions[tp]
                elif before != after == seeks[tp]:
                    # Seeked while the fetch was out: returning these records moved the
                    # position past them, so it must be moved back. A seek made after the
                    # fetch returned has already set the position where it belongs.
                    partitions.refetch(tp)
        with metrics.STAGE["admit"].time():
            admitted = await partitions.admit(fresh, positions)
        await self.committer.commit_all(admitted)
        await self.lag.observe()

    async def _fetch(self, records_max: int) -> tuple[Fetched, dict[TopicPartition, int]] | None:
        """What is ready, and each partition's position right after it; None on a failure."""
        try:
            fetched = await self._consumer.getmany(
                timeout_ms=self._fetch_wait_ms, max_records=records_max
            )
            # No await yields between the fetch and here (a valid position is returned at
            # once), so these are the positions right after the fetched records.
            return fetched, {tp: await self._consumer.position(tp) for tp in fetched}
        except OffsetOutOfRangeError as exc:
            async with self._lock:
                for tp in exc.args[0] if exc.args else ():
                    await self.log_ends.out_of_range(tp)
        except NoOffsetForPartitionError:
            pass  # a partition assigned a moment ago, not yet positioned by its claim
        except KafkaError as exc:
            # aiokafka may have moved positions on its own (past part of an oversized batch,
            # with RecordTooLargeError): fetch every partition again from where it stands.
            log.warning("fetch failed; fetching again from the stored positions", error=repr(exc))
            async with self._lock:
                for tp in list(self.partitions.workers):
                    self.partitions.refetch(tp)
            await asyncio.sleep(RESYNC_BACKOFF_START_S)
        return None
