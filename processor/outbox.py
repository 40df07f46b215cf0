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
from typing import Literal, Protocol

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
from messaging.kafka import RecordBatches, SentBatch
from processor.crash_points import CrashPoint
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
    types: frozenset[str] = frozenset()  # of its records, for a crash point (fault tests)


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
        self._alerts_topic = settings.alerts_topic
        self._own_topics = frozenset({settings.events_topic, settings.dlq_topic,
                                      settings.alerts_topic})  # fmt: skip
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
        self._crash = CrashPoint.parse(settings.crash_at)  # fault tests only

    async def submit(self, job: PublishJob) -> None:
        if job.messages:
            await self._queue.put(job)
            metrics.OUTBOX_BACKLOG.inc(len(job.messages))

    async def drain(self) -> None:
        """Wait until every submitted job is published (or its partition was lost) and its
        watermark stored."""
        await self._queue.join()
        await self._watermarks.flush()

    async def close(self) -> None:
        """After `run` has ended: stop storing watermarks (see Watermarks.close)."""
        await self._watermarks.close()

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
        """Publish every record of the jobs, then hand their marks over.

        Deliberately no retry cap: a reply must never be dropped. Each attempt is bounded in
        time, the queue is bounded, so a long broker outage stops intake instead of losing
        data. Why only the failed batches are sent again: a round's batches go to many
        partitions, and a broker restart or leader move fails some while others land; sending
        the whole round again answered the landed ones twice. Only a round that timed out
        as a whole (its acknowledgements unknown) is sent again whole. A record sent again goes
        after what its partition took meanwhile: readers match replies by command id and
        apply events by account version, so order across a retry does not matter to them.
        """
        parts = [_Part(job, m, kind) for job in jobs for m in job.messages for kind in _kinds(m)]
        backoff_s = 0.05
        while parts:
            try:
                with metrics.STAGE["publish"].time():
                    failed = await asyncio.wait_for(self._publish(parts), self._timeout_s * 2)
            except (KafkaError, TimeoutError) as exc:
                failed, error = parts, exc
            else:
                error = None if not failed else failed[0].error
            if failed:
                log.warning("publish failed; retrying", records=len(failed), error=repr(error))
                self._forget_topics()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)
            parts = failed
        if self._crash is not None:
            self._crash.reached("after_publish", {t for job in jobs for t in job.types})
        self._watermarks.published(_marks(jobs))

    async def _publish(self, parts: list[_Part]) -> list[_Part]:
        """Send the parts in record batches; return those that failed: the parts of batches
        that failed, and, when the broker failed us while they were being added (a topic's
        metadata, the topic listing), that part and the ones after it (each would wait out
        the same timeout). What was added before is sent and awaited, never sent twice."""
        batches = RecordBatches(self._producer, self._partition_counts)
        unsent: list[_Part] = []
        for index, part in enumerate(parts):
            try:
                await self._add(batches, part)
            except KafkaError as exc:
                unsent = [p.failing(exc) for p in parts[index:]]
                break
        return await self._delivered(await batches.send_tagged()) + unsent

    async def _add(self, batches: RecordBatches, part: _Part) -> None:
        """Append the part's record: a reply to its topic, or dead-lettered when it cannot
        be delivered there."""
        job, m = part.job, part.message
        if part.kind == "event":
            assert m.event_value is not None
            await batches.add(self._events_topic, m.key, m.event_value, part)
        elif part.kind == "dlq":
            assert m.dlq_value is not None
            await batches.add(self._dlq_topic, m.key, m.dlq_value, part)
        elif part.kind == "alert":
            assert m.alert_value is not None
            await batches.add(self._alerts_topic, m.key, m.alert_value, part)
        else:
            assert m.reply_value is not None and m.reply_topic
            why = await self._undeliverable(m.reply_topic, job.queued_s)
            key = m.key if m.reply_key is None else m.reply_key
            if why is None:
                await batches.add(m.reply_topic, key, m.reply_value, part)
            else:
                letter = _reply_letter(job, m, m.reply_value, f"{m.reply_topic!r} {why}")
                await batches.add(self._dlq_topic, key, letter, part)
                metrics.DEAD_LETTERS.labels(DecodeErrorCode.REPLY_UNDELIVERABLE).inc()

    def _forget_topics(self) -> None:
        """After a failed round: a topic may be gone or changed, so list and count again."""
        self._listed_at_s = float("-inf")
        self._topics = frozenset()
        for topic in list(self._partition_counts):
            if topic not in self._own_topics:
                del self._partition_counts[topic]

    async def _delivered(self, sent: list[SentBatch]) -> list[_Part]:
        """Wait for every batch; return the parts of those that failed (each carrying its
        batch's error), after noting reply topics that refused the wallet (the retry
        dead-letters what it holds for them)."""
        results = await asyncio.gather(*(b.future for b in sent), return_exceptions=True)
        failed: list[_Part] = []
        until_s = time.monotonic() + REFUSED_TOPIC_RECHECK_S
        for batch, result in zip(sent, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            failed += [part.failing(result) for part in batch.tags]
            if isinstance(result, _TOPIC_REFUSALS) and batch.topic not in self._own_topics:
                log.error("reply topic refused the wallet; its replies are dead-lettered",
                          reply_topic=batch.topic, error=type(result).__name__)  # fmt: skip
                why = f"refused the wallet: {type(result).__name__}"
                self._refused[batch.topic] = (until_s, why)
        return failed

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


_Kind = Literal["reply", "event", "dlq", "alert"]


@dataclass(frozen=True, slots=True)
class _Part:
    """One record a message makes the relay send: its reply, its event, its dead letter or
    its alert."""

    job: PublishJob
    message: OutboxMessage
    kind: _Kind
    error: BaseException | None = None  # why its last send failed

    def failing(self, error: BaseException) -> _Part:
        return _Part(self.job, self.message, self.kind, error)


def _kinds(m: OutboxMessage) -> list[_Kind]:
    kinds: list[_Kind] = []
    if m.reply_value is not None and m.reply_topic:
        kinds.append("reply")
    if m.event_value is not None:
        kinds.append("event")
    if m.dlq_value is not None:
        kinds.append("dlq")
    if m.alert_value is not None:
        kinds.append("alert")
    return kinds


def _marks(jobs: list[PublishJob]) -> dict[tuple[str, int], PublishedMark]:
    """Each partition's watermark after the jobs (a partition's jobs are queued in order, so
    its last job's mark is the highest)."""
    marks = {}
    for job in jobs:
        last = job.messages[-1]
        marks[(job.topic, job.partition)] = PublishedMark(
            job.topic, job.partition, job.epoch, last.generation, last.source_offset + 1
        )
    return marks


def _reply_letter(job: PublishJob, message: OutboxMessage, reply: bytes, why: str) -> bytes:
    source = (job.topic, job.partition, message.source_offset)
    return dead_letter_bytes(DecodeErrorCode.REPLY_UNDELIVERABLE, f"reply topic {why}", source,
                             message.key, reply, datetime.now(UTC))  # fmt: skip
