"""The outbox relay: publishes each committed batch's replies, events and dead letters.

Rule 6: a reply must go out even if the process dies between commit and publish. The rows are
in PostgreSQL (written in the batch transaction); this relay publishes them and then advances
the partition's watermark. A new owner of the partition republishes everything past the
watermark, so delivery is at-least-once and consumers dedupe by `command_id`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.store import EventStore, OutboxMessage, PublishedMark
from wallet import metrics
from wallet.db import RETRIABLE_DB_ERRORS
from wallet.kafka import RecordBatches
from wallet.settings import Settings

log = structlog.get_logger("wallet.outbox")
BACKLOG_PAGE_MAX = 5_000
JOBS_PER_ROUND_MAX = 256
PRUNE_ROWS_MAX = 20_000  # per partition and pass: a pass stays short however far behind
_MISSING_TOPIC_RECHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class PublishJob:
    topic: str
    partition: int
    epoch: int
    messages: list[OutboxMessage]


class OutboxPublisher:
    def __init__(self, producer: AIOKafkaProducer, store: EventStore, settings: Settings) -> None:
        self._producer = producer
        self._store = store
        self._events_topic = settings.events_topic
        self._dlq_topic = settings.dlq_topic
        self._timeout_s = settings.kafka_timeout_ms / 1000
        self._backoff_max_s = settings.retry_backoff_max_ms / 1000
        # Bounded: when Kafka is slow, the processor waits here instead of growing memory.
        self._queue: asyncio.Queue[PublishJob] = asyncio.Queue(maxsize=settings.outbox_queue_max)
        self._known_topics: set[str] = {settings.events_topic, settings.dlq_topic}
        self._missing_topics: dict[str, float] = {}  # topic -> monotonic time to look again
        self._partition_counts: dict[str, int] = {}
        self._keep_rows = settings.outbox_keep_rows
        self._prune_interval_s = settings.outbox_prune_interval_ms / 1000
        self._prune_due_s = 0.0
        self._prune_marks: dict[tuple[str, int], PublishedMark] = {}

    async def submit(self, job: PublishJob) -> None:
        if job.messages:
            await self._queue.put(job)
            metrics.OUTBOX_BACKLOG.inc(len(job.messages))

    async def drain(self) -> None:
        """Wait until every submitted job is published (or its partition was lost)."""
        await self._queue.join()

    async def submit_backlog(self, topic: str, partition: int, epoch: int, after: tuple[int, int]):
        """Queue what a previous owner committed but may not have published."""
        while True:
            page = await self._store.unpublished(topic, partition, after, BACKLOG_PAGE_MAX)
            if not page:
                return
            log.info("republishing outbox backlog", partition=partition, messages=len(page))
            await self.submit(PublishJob(topic, partition, epoch, page))
            last = page[-1]
            after = (last.generation, last.source_offset + 1)

    async def run(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            # Take whatever else is queued: one round of acks and one watermark statement for
            # all of it, instead of a round trip per batch (that made the relay the bottleneck).
            while len(jobs) < JOBS_PER_ROUND_MAX and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                await self._publish_until_done(jobs)
                metrics.OUTBOX_BACKLOG.dec(sum(len(job.messages) for job in jobs))
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _publish_until_done(self, jobs: list[PublishJob]) -> None:
        # Deliberately no retry cap: a reply must never be dropped. Each attempt is bounded in
        # time, the queue is bounded, so a long broker outage stops intake instead of losing data.
        backoff_s = 0.05
        while True:
            try:
                await asyncio.wait_for(self._publish(jobs), self._timeout_s * 2)
                return
            except (KafkaError, TimeoutError, *RETRIABLE_DB_ERRORS) as exc:
                # A database error too: marking what was published failed, so it is published
                # again on the retry (replies and events are at-least-once; readers dedupe).
                # A whole round is sent again, so a send that timed out after all went out
                # goes out twice: WALLET_KAFKA_TIMEOUT_MS should outlast a leader failover.
                log.warning("publish failed; retrying", jobs=len(jobs), error=repr(exc))
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)

    async def _publish(self, jobs: list[PublishJob]) -> None:
        batches = RecordBatches(self._producer, self._partition_counts)
        marks: dict[tuple[str, int], PublishedMark] = {}
        for job in jobs:
            for m in job.messages:
                topic = m.reply_topic
                if m.reply_value is not None and topic and await self._reply_topic_exists(topic):
                    await batches.add(topic, m.key, m.reply_value)
                if m.event_value is not None:
                    await batches.add(self._events_topic, m.key, m.event_value)
                if m.dlq_value is not None:
                    await batches.add(self._dlq_topic, m.key, m.dlq_value)
            last = job.messages[-1]
            # Jobs of one partition are queued in order, so the last one's mark is the highest.
            marks[(job.topic, job.partition)] = PublishedMark(
                job.topic, job.partition, job.epoch, last.generation, last.source_offset + 1
            )
        await asyncio.gather(*await batches.send())
        await self._store.mark_published(list(marks.values()))
        await self._prune(marks)

    async def _prune(self, marks: dict[tuple[str, int], PublishedMark]) -> None:
        """Keep the outbox bounded: now and then, delete what is long published."""
        self._prune_marks.update(marks)
        now_s = time.monotonic()
        if now_s < self._prune_due_s:
            return
        self._prune_due_s = now_s + self._prune_interval_s
        pending, self._prune_marks = list(self._prune_marks.values()), {}
        deleted = await self._store.prune_outbox(pending, self._keep_rows, PRUNE_ROWS_MAX)
        if deleted:
            log.debug("outbox pruned", rows=deleted)

    async def _reply_topic_exists(self, topic: str) -> bool:
        """A reply addressed to a topic that does not exist is dropped, not retried forever.

        Why: `reply_to` comes from the producer; a typo must not wedge a whole partition.
        """
        if topic in self._known_topics:
            return True
        now_s = time.monotonic()
        if self._missing_topics.get(topic, 0.0) > now_s:
            return False
        try:
            await asyncio.wait_for(self._producer.partitions_for(topic), self._timeout_s)
        except (KafkaError, TimeoutError):
            log.error("reply topic does not exist; reply dropped", reply_topic=topic)
            self._missing_topics[topic] = now_s + _MISSING_TOPIC_RECHECK_S
            return False
        self._known_topics.add(topic)
        return True
