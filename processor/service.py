"""The processor process: one consumer-group member running a worker per assigned partition.

Each step fetches what is ready (bounded by `batch_size_max`), then commits the healthy
partitions' batches together in one transaction (a failing or narrowing partition's alone),
and hands the outbox rows to the relay.
Batches grow with load on their own: under load a fetch returns many records at once; when
idle, `fetch_wait_ms` bounds how long a lone command waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from foundation import metrics
from foundation.errors import FencedError
from foundation.settings import Settings
from ledger.decide import AccountState
from ledger.plan import AccountKey, BatchPlan, IdempotencyId, StoredResult
from messaging.kafka import make_consumer, make_producer, start_producer
from processor.health import RESYNC_BACKOFF_START_S, Health
from processor.intake import IntakeRules
from processor.outbox import OutboxPublisher, PublishJob
from processor.worker import Admitted, AssetCatalog, PartitionWorker, WorkerConfig
from schemas.commands import Command
from storage.db import RETRIABLE_DB_ERRORS, Failure, failure_kind, records_fault
from storage.event_store import EventStore, StaleOffsetError

log = structlog.get_logger("wallet.processor")
_LAG_COMMIT_INTERVAL_S = 1.0
_SHORT_LOG_GRACE_S = 30.0  # Kafka's replica.lag.time.max.ms: a follower may lag that long


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Processor:
    def __init__(self, settings: Settings, store: EventStore, owner: str | None = None) -> None:
        self._settings = settings
        self._store = store
        self._assets = AssetCatalog(store)
        forbidden = {settings.commands_topic, settings.events_topic, settings.dlq_topic}
        self._config = WorkerConfig(
            owner=owner or owner_name(),
            # The setting bounds the whole process: a process that owns every partition holds
            # at most that many accounts (about 350 bytes each), fewer partitions fewer.
            balance_cache_max=max(1, settings.balance_cache_max // settings.partitions),
            rules=IntakeRules(
                partitions=settings.partitions,
                command_bytes_max=settings.command_bytes_max,
                forbidden_reply_topics=frozenset(forbidden),
                reply_topic_patterns=settings.reply_topic_patterns,
            ),
        )
        self._workers: dict[TopicPartition, PartitionWorker] = {}
        # failures in a row, backoff and staleness of each owned partition (processor.health)
        self._health = Health(settings.retry_backoff_max_ms / 1000, time.monotonic)
        # partition -> seeks made so far: a fetch's records are used only if no seek of their
        # partition happened while the fetch was out (see _step)
        self._seeks: Counter[TopicPartition] = Counter()
        # partition -> monotonic time its log was first seen ending before our position
        self._short_since: dict[TopicPartition, float] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: OutboxPublisher | None = None
        self._relay: asyncio.Task[None] | None = None
        self._joined = False  # the consumer has started: joined its group
        self._last_lag_commit_s = 0.0

    @property
    def owner(self) -> str:
        return self._config.owner

    def health(self) -> dict[str, Any] | None:
        """For /health: None until the group is joined, or once the relay has died."""
        if not self._joined or self._relay is None or self._relay.done():
            return None
        return {"owner": self.owner, "partitions": sorted(tp.partition for tp in self._workers)}

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set, then leave the group cleanly."""
        timeout_s = self._settings.kafka_timeout_ms / 1000
        producer = make_producer(self._settings)
        await start_producer(producer, self._settings)
        self._publisher = OutboxPublisher(producer, self._store, self._settings)
        relay = asyncio.create_task(self._publisher.run(), name="outbox-relay")
        self._relay = relay
        consumer = make_consumer(
            self._settings,
            group_id=self._settings.consumer_group,
            auto_offset_reset="none",  # never jump silently: a bad offset is handled below
            max_poll_interval_ms=2 * self._settings.session_timeout_ms + 30_000,
        )
        self._consumer = consumer
        consumer.subscribe([self._settings.commands_topic], listener=_Rebalance(self))
        # Joining waits for a dead member's session to expire and the group to rebalance.
        join_timeout_s = timeout_s + 4 * self._settings.session_timeout_ms / 1000
        await asyncio.wait_for(consumer.start(), join_timeout_s)
        self._joined = True
        log.info("processor started", owner=self.owner, topic=self._settings.commands_topic)
        try:
            await self._until_stopped(consumer, stop, relay, timeout_s)
        finally:
            self._joined = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publisher.drain(), timeout_s)
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            # Bounded too: a broker that does not answer must not keep the process from exiting.
            for client in (consumer, producer):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.stop(), timeout_s)
            log.info("processor stopped", owner=self.owner)

    async def _until_stopped(
        self,
        consumer: AIOKafkaConsumer,
        stop: asyncio.Event,
        relay: asyncio.Task[None],
        timeout_s: float,
    ) -> None:
        """Step until `stop` is set.

        A step still waiting when it is set (on a full outbox queue while the broker is away,
        say) gets `timeout_s` to finish and is then cancelled. Nothing is lost by that: what it
        did not commit, the partition's next owner fetches again from the stored offset, and
        what it committed but did not publish is republished from the outbox.

        The relay never ends on its own; if it does, it failed, and the process stops with its
        error instead of committing batches whose replies nobody would publish.
        """
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                step = asyncio.ensure_future(self._step(consumer))
                await asyncio.wait({step, stopping, relay}, return_when=asyncio.FIRST_COMPLETED)
                if relay.done():
                    step.cancel()
                    await relay  # raises the relay's error
                    raise AssertionError("the outbox relay ended")
                if step.done():
                    await step  # raises what the step raised
                    continue
                try:
                    await asyncio.wait_for(step, timeout_s)
                except TimeoutError:
                    log.error("a step did not finish after stop; cancelled", owner=self.owner)
        finally:
            stopping.cancel()

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        """Fetch, then decide and commit what is fresh, under the lock rebalances take too.

        Why records fetched around a seek are told by seek counts and not by offsets: the
        fetch that brought them was in flight while a claim, reset or retry moved the
        partition (found by the PostgreSQL outage test: such records, taken as the next batch,
        skipped every record between the stored offset and them). An offset comparison cannot
        tell them from a fetch that starts past a gap: on Kafka, transaction markers, aborted
        records and compaction leave offsets no consumer ever sees.
        """
        before = self._seeks.copy()
        fetch = await self._fetch(consumer)
        if fetch is None:
            return
        fetched, positions = fetch
        after = self._seeks.copy()  # no await since the fetch returned
        async with self._lock:
            await self._resync_stale()
            await self._check_log_ends()
            fresh = {tp: r for tp, r in fetched.items() if before[tp] == self._seeks[tp]}
            for tp in fetched.keys() - fresh.keys():
                if before[tp] != after[tp] == self._seeks[tp]:
                    # Seeked while the fetch was out: returning these records moved the
                    # position past them, so it must be moved back. A seek made after the
                    # fetch returned has already set the position where it belongs.
                    self._refetch(tp)
            await self._run_batches(fresh, positions)
            await self._observe_lag()
        await self._commit_lag_offsets()

    async def _fetch(
        self, consumer: AIOKafkaConsumer
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], dict[TopicPartition, int]] | None:
        """What is ready, and each partition's position right after it; None on a failure."""
        try:
            fetched = await consumer.getmany(
                timeout_ms=self._settings.fetch_wait_ms, max_records=self._settings.batch_size_max
            )
            # No await yields between the fetch and here (a valid position is returned at
            # once), so these are the positions right after the fetched records.
            return fetched, {tp: await consumer.position(tp) for tp in fetched}
        except OffsetOutOfRangeError as exc:
            async with self._lock:
                for tp in exc.args[0] if exc.args else ():
                    await self._out_of_range(tp)
        except NoOffsetForPartitionError:
            pass  # a partition assigned a moment ago, not yet positioned by its claim
        except KafkaError as exc:
            # aiokafka may have moved positions on its own (past part of an oversized batch,
            # with RecordTooLargeError): fetch every partition again from where it stands.
            log.warning("fetch failed; fetching again from the stored positions", error=repr(exc))
            async with self._lock:
                for tp in list(self._workers):
                    self._refetch(tp)
            await asyncio.sleep(RESYNC_BACKOFF_START_S)
        return None

    async def _out_of_range(self, tp: TopicPartition) -> None:
        """A fetch fell outside the log: reset, unless retention only removed the record the
        worker was about to check (an idle partition on Kafka loses every old segment after
        retention.ms), while its position is still in the log."""
        worker = self._workers.get(tp)
        assert self._consumer is not None
        if worker is not None and worker.verifying:
            timeout_s = self._settings.kafka_timeout_ms / 1000
            try:
                starts = await asyncio.wait_for(self._consumer.beginning_offsets([tp]), timeout_s)
            except (KafkaError, TimeoutError) as exc:
                log.warning("log start unknown; fetching again", partition=tp.partition,
                            error=repr(exc))  # fmt: skip
                self._refetch(tp)
                return
            if worker.fetch_from < starts[tp] <= worker.next_offset:
                log.info("last processed record removed by retention; carrying on",
                         partition=tp.partition, log_start=starts[tp],
                         next_offset=worker.next_offset)  # fmt: skip
                worker.trust_log()
                self._seek(tp, worker.next_offset)
                return
        await self._reset(tp, "offset out of range", None)

    def _refetch(self, tp: TopicPartition) -> None:
        """Fetch again from where the worker stands (records fetched before were dropped)."""
        worker = self._workers.get(tp)
        if worker is not None and not self._health.stale(tp):
            log.info("records fetched across a seek dropped; fetching again",
                     partition=tp.partition, fetch_from=worker.fetch_from)  # fmt: skip
            self._seek(tp, worker.fetch_from)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        """Every seek goes through here or _seek_to_beginning and counts, so that _step knows
        which fetches a seek made stale."""
        assert self._consumer is not None
        self._seeks[tp] += 1
        self._consumer.seek(tp, offset)

    async def _seek_to_beginning(self, tp: TopicPartition) -> None:
        assert self._consumer is not None
        self._seeks[tp] += 1
        await self._consumer.seek_to_beginning(tp)

    async def _run_batches(
        self,
        fetched: dict[TopicPartition, list[ConsumerRecord]],
        positions: dict[TopicPartition, int],
    ) -> None:
        """Admit each partition's fetched records as a batch and commit them."""
        admitted = []
        for tp, records in fetched.items():
            worker = self._workers.get(tp)
            if worker is None or self._health.stale(tp) or not records:
                continue
            records, position = self._in_order(tp, records, positions[tp])
            reason = worker.log_replaced(records)
            if reason is not None:
                await self._reset(tp, reason, self._highwater(tp))
                continue
            batch = worker.admit(records, position)
            if batch is not None:
                admitted.append(batch)
        # Healthy partitions share one transaction; a partition whose batch failed recently is
        # committed alone, so one poisoned partition never holds up the others.
        groups: list[list[Admitted]] = []
        together = []
        for b in admitted:
            if self._health.failing(b.worker.tp) or b.worker.narrowing_down:
                groups.append([b])
            else:
                together.append(b)
        if together:
            groups.append(together)
        await asyncio.gather(*(self._commit(group) for group in groups))

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
                self._seek(tp, records[i - 1].offset + 1)
                return records[:i], records[i - 1].offset + 1
        return records, position

    async def _commit(self, group: list[Admitted]) -> None:
        """Look up, plan and commit a group of partitions' batches in one transaction."""
        started_s = time.perf_counter()
        if len(group) == 1 and group[0].probes is not None:
            decided = await self._set_aside_or_not(group[0])
            if decided is None:
                return
            group = [decided]
        try:
            plans = await self._plans(group)
            await self._store.commit_batches(
                [(b.position, p) for b, p in zip(group, plans, strict=True)]
            )
        except FencedError as exc:  # StaleOffsetError included: its partition is resynced
            self._refused(group, exc)
            return
        except AssertionError:
            raise  # a broken invariant of the code that moves money: crash loudly
        except Exception as exc:  # every other failure is retried: see _failed
            self._failed(group, exc)
            return
        assert self._publisher is not None
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started_s)
        for b, plan in zip(group, plans, strict=True):
            _observe(b, plan)
            self._health.committed(b.worker.tp)
            messages = b.worker.committed(b, plan)
            if b.cut:  # the consumer read past the batch: fetch the rest again
                self._seek(b.worker.tp, b.worker.next_offset)
            await self._publisher.submit(PublishJob(b.worker.tp.topic, b.worker.tp.partition,
                                                    b.worker.epoch, messages))  # fmt: skip

    async def _plans(self, group: list[Admitted]) -> list[BatchPlan]:
        (known, loaded), assets = await asyncio.gather(
            self._lookups(group), self._assets.cover({a for b in group for a in b.assets})
        )
        return [b.worker.plan(b, known, loaded, assets) for b in group]

    async def _set_aside_or_not(self, batch: Admitted) -> Admitted | None:
        """Before a record is set aside (`batch`), two batches written and rolled back: the
        record as it is, then an ordinary command (the control). The record passing means its
        cause is gone: it is processed as it is. The control passing means the failure is the
        record's: it is set aside. Neither passing means the failure is the database's:
        nothing is set aside, and the partition retries with backoff (a check every batch
        breaks would otherwise empty the partition into the DLQ); None is returned."""
        assert batch.probes is not None
        plain, control = batch.probes
        error: Exception | None = None
        for probe in (plain, control):
            try:
                [plan] = await self._plans([probe])
                await self._store.probe_batches([(probe.position, plan)])
                return plain if probe is plain else batch
            except AssertionError:
                raise
            except FencedError as exc:
                self._refused([batch], exc)
                return None
            except Exception as exc:  # the probe failed: see the docstring
                error = exc
        assert error is not None
        metrics.BATCH_FAILURES.inc()
        kind = f"{failure_kind(error)}, and on an ordinary command too"
        failures = self._health.failed(batch.worker.tp, kind)
        log.error("an ordinary command fails too; retrying, nothing set aside",
                  partition=batch.worker.tp.partition, failures_in_a_row=failures,
                  error=kind)  # fmt: skip
        return None

    async def _lookups(
        self, group: list[Admitted]
    ) -> tuple[dict[IdempotencyId, StoredResult], dict[AccountKey, AccountState]]:
        return await asyncio.gather(
            self._store.find_processed([i for b in group for i in b.ids]),
            self._store.load_accounts([k for b in group for k in b.uncached]),
        )

    def _failed(self, group: list[Admitted], exc: Exception) -> None:
        """A group's transaction failed: retry from the stored offsets, nothing skipped.

        Only a batch that failed alone is narrowed (see processor.narrowing): in a group, the
        fault may be any partition's, so each is first retried alone. Nothing was half-written:
        the transaction rolled back, or it committed and the resync finds the new offset.
        """
        metrics.BATCH_FAILURES.inc()
        fault, kind = records_fault(exc), failure_kind(exc)
        failures = 0
        for b in group:
            if len(group) == 1:
                b.worker.failed(b, kind, fault)
            quick = len(group) == 1 and fault
            failures = max(failures, self._health.failed(b.worker.tp, kind, quick))
        where = None
        if not isinstance(exc, RETRIABLE_DB_ERRORS) and exc.__traceback__ is not None:
            frame = traceback.extract_tb(exc.__traceback__)[-1]  # a planner bug: where it is
            where = f"{frame.filename}:{frame.lineno}"
        log.error("batch failed; will retry from the stored offset",
                  partitions=[b.worker.tp.partition for b in group], records=sum(
                      len(b.intakes) for b in group), failures_in_a_row=failures,
                  error=kind, raised_at=where)  # fmt: skip

    def _refused(self, group: list[Admitted], exc: FencedError) -> None:
        """The store refused one partition's batch, so the whole group rolled back."""
        topic, partition = exc.data.get("topic"), exc.data.get("partition")
        assert isinstance(topic, str) and isinstance(partition, int), exc.data
        refused = TopicPartition(topic, partition)
        if isinstance(exc, StaleOffsetError):
            log.warning(
                "stored offset moved; resyncing", partition=refused.partition, error=str(exc)
            )
        else:
            log.error(
                "fenced: partition has a newer owner", partition=refused.partition, error=str(exc)
            )
            self._drop(refused)
        # The others were fine but were rolled back with it: refetch them from storage.
        for b in group:
            if b.worker.tp != refused:
                self._health.refetch(b.worker.tp)
        if isinstance(exc, StaleOffsetError):
            self._health.refetch(refused)

    async def _resync_stale(self) -> None:
        for tp in self._health.due():
            worker = self._workers.get(tp)
            if worker is None:
                self._health.forget(tp)
            elif await self._take_over(worker, self._health.failure(tp)):
                self._health.resynced(tp)

    async def _take_over(self, worker: PartitionWorker, failure: Failure | None = None) -> bool:
        """Claim the partition, queue its unpublished outbox rows, seek to its position.

        On failure the partition stays stale with a growing backoff (PostgreSQL may be down:
        retrying every step was seen at about 50 claims a second)."""
        assert self._consumer is not None and self._publisher is not None
        try:
            claim = await worker.take_over(failure)
            after = (claim.published_generation, claim.published_offset)
            await self._publisher.submit_backlog(worker.tp.topic, worker.tp.partition,
                                                 claim.epoch, after)  # fmt: skip
        except RETRIABLE_DB_ERRORS as exc:
            log.error("could not claim partition", partition=worker.tp.partition, error=repr(exc))
            self._health.failed(worker.tp, failure_kind(exc))
            return False
        self._seek(worker.tp, worker.fetch_from)
        log.info("partition claimed", partition=worker.tp.partition, epoch=claim.epoch,
                 next_offset=claim.next_offset, generation=claim.generation)  # fmt: skip
        return True

    async def _check_log_ends(self) -> None:
        """A log that ends before our position may have been replaced: check it.

        Why not reset at once: on Kafka a partition's new leader can report a high watermark
        below what the old leader had let us read, until its followers fetch again (found by
        the three-node leader-kill test: "log ends at 279" with 290 stored). So the worker
        first re-reads its last processed record, taking no new record meanwhile: the same
        record means the log is ours (Kafka's case); another record means it was replaced
        (Tansu restarted, and producers refilled it). A log whose record does not come back
        within _SHORT_LOG_GRACE_S is taken as replaced too: Tansu's new log may never grow
        that far.
        """
        now_s = time.monotonic()
        for tp, worker in list(self._workers.items()):
            highwater = self._highwater(tp)
            if highwater is None or highwater >= worker.next_offset or self._health.stale(tp):
                self._short_since.pop(tp, None)
                continue
            first_seen = tp not in self._short_since
            since_s = self._short_since.setdefault(tp, now_s)
            if first_seen and worker.verify_again():
                log.warning("log ends before our position; checking the last record processed",
                            partition=tp.partition, log_end=highwater,
                            next_offset=worker.next_offset)  # fmt: skip
                self._seek(tp, worker.fetch_from)
            elif first_seen or (worker.verifying and now_s - since_s > _SHORT_LOG_GRACE_S):
                # Nothing to check, or the record never came back. Once it did and matched,
                # the log is ours however short it looks: its end catches up.
                await self._reset(tp, f"log ends at {highwater}", highwater)

    def _highwater(self, tp: TopicPartition) -> int | None:
        assert self._consumer is not None
        return self._consumer.highwater(tp)

    async def _reset(self, tp: TopicPartition, reason: str, log_end: int | None) -> None:
        worker = self._workers.get(tp)
        if worker is None:
            return
        self._short_since.pop(tp, None)
        try:
            await worker.reset(reason, log_end)
        except FencedError:
            self._drop(tp)
            return
        except RETRIABLE_DB_ERRORS as exc:
            log.error("could not record partition reset", partition=tp.partition, error=repr(exc))
            self._health.failed(tp, failure_kind(exc))
            return
        await self._seek_to_beginning(tp)

    def _drop(self, tp: TopicPartition) -> None:
        self._short_since.pop(tp, None)
        self._workers.pop(tp, None)
        self._health.forget(tp)
        if self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.pause(tp)

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        metrics.REBALANCES.labels("assigned").inc()
        async with self._lock:
            assert self._consumer is not None
            for tp in sorted(partitions):
                worker = PartitionWorker(tp, self._store, self._assets, self._config)
                self._workers[tp] = worker
                self._consumer.resume(tp)
                await self._take_over(worker)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Give the partitions up, once what they committed is published (bounded).

        Why wait for the relay: the next owner (this process again, often, after a
        coordinator failover) republishes everything past the published watermark. Replies
        still queued here would go out twice; published first, they go out once.
        """
        metrics.REBALANCES.labels("revoked").inc()
        async with self._lock:
            for tp in partitions:
                self._drop(tp)
        if self._publisher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._publisher.drain(), self._settings.kafka_timeout_ms / 1000
                )

    async def _observe_lag(self) -> None:
        """Lag from the last stable offset (the end a read_committed consumer can reach) to
        the consumer's position: a trailing transaction marker is no lag, though the stored
        position only moves past it with the next batch."""
        assert self._consumer is not None
        lags = {}
        for tp, worker in self._workers.items():
            end = self._consumer.last_stable_offset(tp)
            if end is None or self._health.stale(tp):
                continue
            position = worker.next_offset
            if end > position:  # asked only then: most steps of a healthy partition skip it
                with contextlib.suppress(KafkaError, TimeoutError):  # bounded: waits if unset
                    position = max(position, await asyncio.wait_for(self._consumer.position(tp), 1))
            lags[tp.partition] = max(0, end - position)
        metrics.CONSUMER_LAG.set_all(lags)
        metrics.PARTITION_FAILURES.set_all(self._health.failures_by_partition(self._workers))
        metrics.PARTITIONS_OWNED.set(len(self._workers))

    async def _commit_lag_offsets(self) -> None:
        """Kafka offsets are only for lag dashboards; the truth is in PostgreSQL (rule 4)."""
        now_s = time.monotonic()
        if now_s - self._last_lag_commit_s < _LAG_COMMIT_INTERVAL_S or self._consumer is None:
            return
        self._last_lag_commit_s = now_s
        offsets = {tp: w.next_offset for tp, w in self._workers.items() if w.next_offset > 0}
        if not offsets:
            return
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), 2.0)
        except (KafkaError, TimeoutError) as exc:
            log.debug("lag offset commit failed", error=repr(exc))


def _observe(batch: Admitted, plan: BatchPlan) -> None:
    """A committed batch's metrics (here at the edge: the planner stays pure)."""
    metrics.BATCH_SIZE.observe(len(batch.intakes))
    for outcome, count in Counter(plan.decided).items():
        metrics.COMMANDS.labels(*outcome).inc(count)
        if outcome.outcome == "dead_lettered":
            metrics.DEAD_LETTERS.labels(outcome.code).inc(count)
    now_s = time.time()
    for intake in batch.intakes:
        if isinstance(intake.admitted, Command):
            # The producer's clock: a producer running ahead would give negative values.
            sent_s = intake.admitted.sent_at.timestamp()
            metrics.LATENCY_SECONDS.observe(max(0.0, now_s - sent_s))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._processor.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._processor.assigned(assigned)
