"""Committing admitted batches: looked up, planned and written in one transaction per group,
then handed to the outbox relay; a failed or refused group is retried from the stored
offsets, nothing skipped."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import Counter

import orjson
import structlog
from aiokafka import TopicPartition

from foundation import metrics
from foundation.errors import FencedError
from ledger.account import NO_REFERENCES, AccountState, References
from ledger.monitors import Monitor, Spending
from ledger.plan import AccountKey, BatchPlan, IdempotencyId, StoredResult
from processor.crash_points import CrashPoint
from processor.outbox import Outbox, PublishJob
from processor.partitions import Partitions
from processor.worker import Admitted
from schemas.commands import Command
from storage.db import RETRIABLE_DB_ERRORS, failure_kind, records_fault
from storage.event_store import EventStore, StaleOffsetError

log = structlog.get_logger("wallet.processor")


class Committer:
    """Commits the owned partitions' batches (callers hold the processor's lock)."""

    def __init__(
        self,
        store: EventStore,
        partitions: Partitions,
        outbox: Outbox,
        crash: CrashPoint | None = None,
    ) -> None:
        self._store = store
        self._partitions = partitions
        self._health = partitions.health
        self._outbox = outbox
        self._crash = crash  # fault tests only

    async def commit_all(self, admitted: list[Admitted]) -> None:
        """Healthy partitions share one transaction; a partition whose batch failed recently
        is committed alone, so one poisoned partition never holds up the others."""
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
            types = _types(plans) if self._crash is not None else frozenset()
            if self._crash is not None:
                self._crash.reached("before_commit", types)
            with metrics.STAGE["write"].time():
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
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started_s)
        if self._crash is not None:
            self._crash.reached("after_commit", types)
        for b, plan in zip(group, plans, strict=True):
            _observe(b, plan)
            self._health.committed(b.worker.tp)
            messages = b.worker.committed(b, plan)
            if b.cut:  # the consumer read past the batch: fetch the rest again
                self._partitions.seek(b.worker.tp, b.worker.next_offset)
            job = PublishJob(b.worker.tp.topic, b.worker.tp.partition, b.worker.epoch, messages,
                             types=types)  # fmt: skip
            await self._outbox.submit(job)

    async def _plans(self, group: list[Admitted]) -> list[BatchPlan]:
        with metrics.STAGE["lookup"].time():
            (known, loaded, refs), assets, caps, watched = await asyncio.gather(
                self._lookups(group),
                self._partitions.assets.cover({a for b in group for a in b.assets}),
                self._partitions.caps.of(k for b in group for k in b.keys),
                self._watched(group),
            )
        with metrics.STAGE["plan"].time():
            return [b.worker.plan(b, known, loaded, assets, refs, caps, watched) for b in group]

    async def _watched(self, group: list[Admitted]) -> tuple[tuple[Monitor, ...], Spending]:
        """The monitors, and the spending in their windows of the group's wallets that their
        partitions do not know yet (most, most of the time: no query)."""
        lookup = self._partitions.monitors
        found = await lookup.current()
        if not found:
            return found, {}
        wanted = [k for b in group for k in b.worker.spending.wanted(b.keys, found)]
        return found, await lookup.spending(wanted, found)

    async def _lookups(
        self, group: list[Admitted]
    ) -> tuple[dict[IdempotencyId, StoredResult], dict[AccountKey, AccountState], References]:
        return await asyncio.gather(
            self._store.find_processed([i for b in group for i in b.ids]),
            self._store.load_accounts([k for b in group for k in b.uncached]),
            self._references(group),
        )

    async def _references(self, group: list[Admitted]) -> References:
        """What the group's commands name besides their wallets (most name nothing: then no
        query at all)."""
        holds = [k for b in group for k in b.references[0]]
        targets = [t for b in group for t in b.references[1]]
        receivers = [u for b in group for u in b.references[2]]
        if not holds and not targets:
            return NO_REFERENCES
        return await self._store.find_references(holds, targets, receivers)

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
            self._partitions.drop(refused)
        # The others were fine but were rolled back with it: refetch them from storage.
        for b in group:
            if b.worker.tp != refused:
                self._health.refetch(b.worker.tp)
        if isinstance(exc, StaleOffsetError):
            self._health.refetch(refused)


def _observe(batch: Admitted, plan: BatchPlan) -> None:
    """A committed batch's metrics (here at the edge: the planner stays pure)."""
    metrics.BATCH_SIZE.observe(len(batch.intakes))
    for row in plan.processed_rows:
        if row.alerts is not None:
            for hit in orjson.loads(row.alerts):
                metrics.ALERTS.labels(hit[1]).inc()
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


def _types(plans: list[BatchPlan]) -> frozenset[str]:
    """The command types of a group's records, and the types of its records (a conversion's,
    recorded of a purchase), for its crash points."""
    recorded = {r.type for plan in plans for r in plan.processed_rows}
    return frozenset(d.type for plan in plans for d in plan.decided).union(recorded)
