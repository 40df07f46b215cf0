"""Watching where each owned partition's log ends: a log that ends before our position, or a
fetch that falls outside the log, may mean the log was replaced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from processor.partitions import Consumer, Partitions

log = structlog.get_logger("wallet.processor")
SHORT_LOG_GRACE_S = 30.0  # Kafka's replica.lag.time.max.ms: a follower may lag that long


class LogEnds:
    """Checks the owned partitions' log ends (callers hold the processor's lock)."""

    def __init__(
        self,
        partitions: Partitions,
        consumer: Consumer,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._partitions = partitions
        self._consumer = consumer
        self._timeout_s = timeout_s
        self._clock = clock

    async def check(self) -> None:
        """A log that ends before our position may have been replaced: check it.

        Why not reset at once: on Kafka a partition's new leader can report a high watermark
        below what the old leader had let us read, until its followers fetch again (found by
        the three-node leader-kill test: "log ends at 279" with 290 stored). So the worker
        first re-reads its last processed record, taking no new record meanwhile: the same
        record means the log is ours (Kafka's case); another record means it was replaced
        (Tansu restarted, and producers refilled it). A log whose record does not come back
        within SHORT_LOG_GRACE_S is taken as replaced too: Tansu's new log may never grow
        that far.
        """
        now_s = self._clock()
        partitions = self._partitions
        for tp, worker in list(partitions.workers.items()):
            highwater = self._consumer.highwater(tp)
            if highwater is None or highwater >= worker.next_offset or partitions.health.stale(tp):
                worker.short_since_s = None
                continue
            first_seen = worker.short_since_s is None
            if worker.short_since_s is None:
                worker.short_since_s = now_s
            if first_seen and worker.last.verify_again():
                log.warning("log ends before our position; checking the last record processed",
                            partition=tp.partition, log_end=highwater,
                            next_offset=worker.next_offset)  # fmt: skip
                partitions.seek(tp, worker.fetch_from)
            elif first_seen or (
                worker.last.verifying and now_s - worker.short_since_s > SHORT_LOG_GRACE_S
            ):
                # Nothing to check, or the record never came back. Once it did and matched,
                # the log is ours however short it looks: its end catches up.
                await partitions.reset(tp, f"log ends at {highwater}", highwater)

    async def out_of_range(self, tp: TopicPartition) -> None:
        """A fetch fell outside the log: reset, unless retention only removed the record the
        worker was about to check (an idle partition on Kafka loses every old segment after
        retention.ms), while its position is still in the log."""
        worker = self._partitions.workers.get(tp)
        if worker is not None and worker.last.verifying:
            try:
                starts = await asyncio.wait_for(
                    self._consumer.beginning_offsets([tp]), self._timeout_s
                )
            except (KafkaError, TimeoutError) as exc:
                log.warning("log start unknown; fetching again", partition=tp.partition,
                            error=repr(exc))  # fmt: skip
                self._partitions.refetch(tp)
                return
            if worker.fetch_from < starts[tp] <= worker.next_offset:
                log.info("last processed record removed by retention; carrying on",
                         partition=tp.partition, log_start=starts[tp],
                         next_offset=worker.next_offset)  # fmt: skip
                worker.last.trust_log()
                self._partitions.seek(tp, worker.next_offset)
                return
        await self._partitions.reset(tp, "offset out of range", None)
