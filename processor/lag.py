"""The owned partitions' lag, as metrics and as the consumer group's committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from aiokafka.errors import KafkaError

from foundation import metrics
from processor.partitions import Consumer, Partitions

log = structlog.get_logger("wallet.processor")
LAG_COMMIT_INTERVAL_S = 1.0


class LagReport:
    def __init__(self, partitions: Partitions, consumer: Consumer) -> None:
        self._partitions = partitions
        self._consumer = consumer
        self._committed_at_s = 0.0

    async def observe(self) -> None:
        """Lag from the last stable offset (the end a read_committed consumer can reach) to
        the consumer's position: a trailing transaction marker is no lag, though the stored
        position only moves past it with the next batch."""
        workers, health = self._partitions.workers, self._partitions.health
        lags = {}
        for tp, worker in workers.items():
            end = self._consumer.last_stable_offset(tp)
            if end is None or health.stale(tp):
                continue
            position = worker.next_offset
            if end > position:  # asked only then: most steps of a healthy partition skip it
                with contextlib.suppress(KafkaError, TimeoutError):  # bounded: waits if unset
                    position = max(position, await asyncio.wait_for(self._consumer.position(tp), 1))
            lags[tp.partition] = max(0, end - position)
        metrics.CONSUMER_LAG.set_all(lags)
        metrics.PARTITION_FAILURES.set_all(health.failures_by_partition(workers))
        metrics.PARTITIONS_OWNED.set(len(workers))

    async def commit_offsets(self) -> None:
        """Kafka offsets are only for lag dashboards: where a partition stands is the offset
        stored with its last batch in PostgreSQL."""
        now_s = time.monotonic()
        if now_s - self._committed_at_s < LAG_COMMIT_INTERVAL_S:
            return
        self._committed_at_s = now_s
        workers = self._partitions.workers
        offsets = {tp: w.next_offset for tp, w in workers.items() if w.next_offset > 0}
        if not offsets:
            return
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), 2.0)
        except (KafkaError, TimeoutError) as exc:
            log.debug("lag offset commit failed", error=repr(exc))
