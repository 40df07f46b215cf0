"""The outbox relay: publishes each committed batch's replies, events and dead letters.

Rule 6: a reply must go out even if the process dies between commit and publish. The rows are
in PostgreSQL (written in the batch transaction); this relay publishes them and then advances
the partition's watermark. A new owner of the partition republishes everything past the
watermark, so delivery is at-least-once and consumers dedupe by `command_id`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    PolicyViolationError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.protocol.metadata import MetadataRequest

from foundation import metrics
from foundation.settings import Settings
from ledger.wire import dead_letter_bytes
from messaging.kafka import RecordBatches
from processor.watermarks import Watermarks
from schemas.dead_letters import DecodeErrorCode
from storage.event_store import EventStore, OutboxMessage, PublishedMark

log = structlog.get_logger("wallet.outbox")
BACKLOG_PAGE_MAX = 5_000
JOBS_PER_ROUND_MAX = 256
REFUSED_TOPIC_RECHECK_S = 60.0  # a reply topic that refused the wallet is tried again after
# Send errors about one destination topic, not the broker: replies to it are dead-lettered.
_TOPIC_REFUSALS = (TopicAuthorizationFailedError, InvalidTopicError, PolicyViolationError)
_UNKNOWN_TOPIC_CODE = UnknownTopicOrPartitionError.errno


@dataclass(frozen=True, slots=True)
class PublishJob:
    topic: str
    partition: int
    epoch: int
    messages: list[OutboxMessage]
    # When the relay was given the job (monotonic): only a topic listing taken after it may
    # say a reply topic does not exist (a topic made just before the command was sent is in
    # any later listing).
    queued_s: float = field(default_factory=time.monotonic)


class Outbox(Protocol):
    """What the processor hands the relay (OutboxPublisher; unit tests give a recorder)."""

    async def submit(self, job: PublishJob) -> None:
        """Queue a committed batch's messages (waits while the queue is full)."""
        ...

    async def submit_backlog(
        self, topic: str, partition: int, epoch: int, after: tuple[int, int]
    ) -> None:
        """Queue a claimed partition's unpublished outbox rows after watermark `after`."""
        ...


class OutboxPublisher:
    def __init__(self, producer: AIOKafkaProducer, store: EventStore, settings: Settings) -> None:
        self._producer = producer
        self._store = store
        self._events_topic = settings.events_topic
        self._dlq_topic = settings.dlq_topic
        self._own_topics = frozenset({settings.events_topic, settings.dlq_topic})
        self._timeout_s = settings.kafka_timeout_ms / 1000
        self._backoff_max_s = settings.retry_backoff_max_ms / 1000
        # Bounded: when Kafka is slow, the processor waits here instead of growing memory.
        self._queue: asyncio.Queue[PublishJob] = asyncio.Queue(maxsize=settings.outbox_queue_max)
        # The broker's topics as last listed (a reply goes only to a topic listed there: asking
        # for an unknown topic's metadata would create it on a broker that auto-creates).
        self._topics: frozenset[str] = frozenset()
        self._listed_at_s = float("-inf")  # monotonic time of that listing
        self._refused: dict[str, tuple[float, str]] = {}  # topic -> (until, why)
        self._partition_counts: dict[str, int] = {}
        self._watermarks = Watermarks(store, settings)

    async def submit(self, job: PublishJob) -> None:
        if job.messages:
            await self._queue.put(job)
            metrics.OUTBOX_BACKLOG.inc(len(job.messages))

    async def drain(self) -> None:
        """Wait until every submitted job is published (or its partition was lost) and its
        watermark stored."""
        await self._queue.join()
        await self._watermarks.flush()

    async def submit_backlog(
        self, topic: str, partition: int, epoch: int, after: tuple[int, int]
    ) -> None:
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
                with metrics.STAGE["publish"].time():
                    await asyncio.wait_for(self._publish(jobs), self._timeout_s * 2)
                return
            except (KafkaError, TimeoutError) as exc:
                # A whole round is sent again, so a send that timed out after all went out
                # goes out twice: WALLET_KAFKA_TIMEOUT_MS should outlast a leader failover.
                log.warning("publish failed; retrying", jobs=len(jobs), error=repr(exc))
                self._forget_topics()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)

    async def _publish(self, jobs: list[PublishJob]) -> None:
        batches = RecordBatches(self._producer, self._partition_counts)
        marks: dict[tuple[str, int], PublishedMark] = {}
        for job in jobs:
            for m in job.messages:
                if m.reply_value is not None and m.reply_topic:
                    why = await self._undeliverable(m.reply_topic, job.queued_s)
                    if why is None:
                        await batches.add(m.reply_topic, m.key, m.reply_value)
                    else:
                        letter = _reply_letter(job, m, m.reply_value, f"{m.reply_topic!r} {why}")
                        await batches.add(self._dlq_topic, m.key, letter)
                        metrics.DEAD_LETTERS.labels(DecodeErrorCode.REPLY_UNDELIVERABLE).inc()
                if m.event_value is not None:
                    await batches.add(self._events_topic, m.key, m.event_value)
                if m.dlq_value is not None:
                    await batches.add(self._dlq_topic, m.key, m.dlq_value)
            last = job.messages[-1]
            # Jobs of one partition are queued in order, so the last one's mark is the highest.
            marks[(job.topic, job.partition)] = PublishedMark(
                job.topic, job.partition, job.epoch, last.generation, last.source_offset + 1
            )
        await self._delivered(await batches.send_by_topic())
        self._watermarks.published(marks)

    def _forget_topics(self) -> None:
        """After a failed round: a topic may be gone or changed, so list and count again."""
        self._listed_at_s = float("-inf")
        for topic in list(self._partition_counts):
            if topic not in self._own_topics:
                del self._partition_counts[topic]

    async def _delivered(self, sent: list[tuple[str, asyncio.Future[Any]]]) -> None:
        """Wait for every batch; raise the first failure, after noting reply topics that
        refused the wallet (the round's retry dead-letters what it holds for them)."""
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed = [(t, r) for (t, _), r in zip(sent, results, strict=True)
                  if isinstance(r, BaseException)]  # fmt: skip
        if not failed:
            return
        self._forget_topics()
        until_s = time.monotonic() + REFUSED_TOPIC_RECHECK_S
        for topic, exc in failed:
            if isinstance(exc, _TOPIC_REFUSALS) and topic not in self._own_topics:
                log.error("reply topic refused the wallet; its replies are dead-lettered",
                          reply_topic=topic, error=type(exc).__name__)  # fmt: skip
                self._refused[topic] = (until_s, f"refused the wallet: {type(exc).__name__}")
        raise failed[0][1]

    async def _undeliverable(self, topic: str, queued_s: float) -> str | None:
        """Why a reply cannot go to `topic` (it does not exist, or refused the wallet), or None.

        Why never wait on one topic: `reply_to` comes from producers, and replies to every
        partition share this relay; asking the broker about each unknown topic in turn once
        held every reply up for seconds, and asking about a topic creates it on a broker that
        auto-creates. The answer comes from a listing of all the broker's topics, taken again
        when it is older than the job: at most one listing a round, however many topics are
        unknown. A listing that fails raises: a broker away is a retry, never a dead letter.
        """
        refused = self._refused.get(topic)
        now_s = time.monotonic()
        if refused is not None and refused[0] > now_s:
            return refused[1]
        if topic in self._topics:
            return None
        if self._listed_at_s <= queued_s:
            self._topics, self._listed_at_s = await self._list_topics(), now_s
            if topic in self._topics:
                return None
            log.warning("reply topic does not exist; its replies are dead-lettered",
                        reply_topic=topic)  # fmt: skip
        return "does not exist (the wallet never creates topics from reply_to)"

    async def _list_topics(self) -> frozenset[str]:
        """Every topic the broker has, including any it reports with an error of its own (a
        topic still electing its leaders exists): one request, never creating a topic."""
        client = self._producer.client
        request = MetadataRequest(None, allow_auto_topic_creation=False)
        response = await asyncio.wait_for(
            client.send(client.get_random_node(), request), self._timeout_s
        )
        # Each entry starts (error_code, topic, ...) in every version of the response.
        return frozenset(t[1] for t in response.topics if t[0] != _UNKNOWN_TOPIC_CODE)


def _reply_letter(job: PublishJob, message: OutboxMessage, reply: bytes, why: str) -> bytes:
    source = (job.topic, job.partition, message.source_offset)
    return dead_letter_bytes(DecodeErrorCode.REPLY_UNDELIVERABLE, f"reply topic {why}", source,
                             message.key, reply, datetime.now(UTC))  # fmt: skip
