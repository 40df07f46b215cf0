"""One partition's worker: decides its fetched batches in order and commits each in one go.

It holds the partition's position, owner epoch and a bounded cache of its users' balances.
The cache is only trusted while this worker owns the partition: it is built after the claim
and updated only after a commit succeeds, so a failed batch leaves no trace in memory.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from ledger.account import NO_REFERENCES, AccountState, Asset, Assets, HoldKey, References
from ledger.caps import Caps
from ledger.monitors import NO_WATCH, Monitor, Spending, watch
from ledger.plan import (
    AccountKey,
    BatchContext,
    BatchPlan,
    IdempotencyId,
    Intake,
    Outcome,
    StoredResult,
    accounts_named,
    plan_batch,
    references_named,
)
from processor import narrowing
from processor.intake import IntakeRules
from processor.last_record import LastRecord, fingerprint
from processor.monitors import SpendingCache
from processor.reader import RecordReader
from schemas.commands import Command
from storage.db import Failure
from storage.event_store import BatchPosition, EventStore, OutboxMessage, PartitionClaim

log = structlog.get_logger("wallet.worker")


class AssetCatalog:
    """The asset codes and their spend orders, shared by a process's workers; reloaded when
    a batch names a new code, and at least every RELOAD_AFTER_S (a spend order changed by
    `wallet assets set-order` applies within that)."""

    RELOAD_AFTER_S = 10.0

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.codes: dict[str, Asset] = {}
        self._loaded_at_s = float("-inf")

    async def cover(self, codes: set[str]) -> dict[str, Asset]:
        # Reload before rejecting: a rejection is recorded forever, so it must not come from
        # a stale list (an asset added a second ago by `wallet assets add`).
        now_s = time.monotonic()
        if not codes <= self.codes.keys() or now_s - self._loaded_at_s > self.RELOAD_AFTER_S:
            self.codes = await self._store.load_assets()
            self._loaded_at_s = now_s
        return self.codes


@dataclass(frozen=True, slots=True)
class Admitted:
    """One partition's fetched batch, decoded, with what its plan must look up first."""

    worker: PartitionWorker
    intakes: list[Intake]
    ids: list[IdempotencyId]  # idempotency records to look up
    keys: set[AccountKey]  # accounts the batch touches
    uncached: list[AccountKey]  # of those, the ones to load
    assets: set[str]
    position: BatchPosition
    cut: bool  # narrowed: records fetched after the batch were left for the next one
    # The holds, transactions and receivers it names (ledger.plan.references_named).
    references: tuple[list[HoldKey], list[uuid.UUID], list[str]]
    # Before its one record is set aside as unprocessable, two batches to write and roll
    # back: the record as it is (its cause may be gone by now), then an ordinary command (the
    # control: does the database take anything at all?). See RecordReader.control.
    probes: tuple[Admitted, Admitted] | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    owner: str
    balance_cache_max: int  # accounts cached by this partition's worker
    rules: IntakeRules
    monitors_reload_ms: int = 10_000  # how often the monitors are read again


class PartitionWorker:
    def __init__(
        self, tp: TopicPartition, store: EventStore, assets: AssetCatalog, config: WorkerConfig
    ) -> None:
        self.tp = tp
        self._store = store
        self._assets = assets
        self._config = config
        self._accounts: OrderedDict[AccountKey, AccountState] = OrderedDict()
        self.spending = SpendingCache(config.balance_cache_max)
        self.claim: PartitionClaim | None = None
        self.next_offset = 0
        self.last = LastRecord()
        # A failing range being narrowed down to its failing record (see processor.narrowing).
        self._narrowing: narrowing.Narrowing | None = None
        self._reader = RecordReader(config.rules, tp.partition)
        self._last_error = ""  # the last failure's kind, for a dead letter's reason
        # Monotonic time the log was first seen ending before next_offset (processor.log_ends)
        self.short_since_s: float | None = None

    @property
    def epoch(self) -> int:
        assert self.claim is not None
        return self.claim.epoch

    @property
    def generation(self) -> int:
        assert self.claim is not None
        return self.claim.generation

    async def take_over(self, failure: Failure | None = None) -> PartitionClaim:
        """Claim the partition (bumping its epoch) and forget anything cached before; a claim
        that retries a failed batch records why."""
        self.claim = await self._store.claim_partition(
            self.tp.topic, self.tp.partition, self._config.owner, failure
        )
        self._adopt(self.claim)
        return self.claim

    async def reset(self, reason: str, log_end_offset: int | None) -> None:
        """The log was replaced: say so loudly, record it, and restart at its beginning."""
        log.error(
            "partition log was replaced; restarting from its beginning",
            topic=self.tp.topic,
            partition=self.tp.partition,
            stored_next_offset=self.next_offset,
            log_end_offset=log_end_offset,
            reason=reason,
        )
        self.claim = await self._store.reset_partition(
            self.tp.topic, self.tp.partition, self.epoch, log_end_offset, reason
        )
        self._narrowing = None
        self._adopt(self.claim)

    def _adopt(self, claim: PartitionClaim) -> None:
        self._accounts.clear()
        self.spending.clear()
        if claim.next_offset != self.next_offset:
            self._narrowing = None  # another owner moved the partition: a new story
        self.next_offset = claim.next_offset
        self._reader.forced = claim.forced
        self.last.claimed(claim.last_offset, claim.last_fingerprint, claim.next_offset)

    @property
    def fetch_from(self) -> int:
        return self.last.fetch_from(self.next_offset)

    def admit(self, records: Sequence[ConsumerRecord], consumed_to: int) -> Admitted | None:
        """Decode the fetched records not processed yet; None when there are none.

        `records` come from one fetch that started at fetch_from, and `consumed_to` is the
        consumer's position after them. Offsets may have gaps (transaction markers, aborted
        records, compaction): the batch covers [next_offset, consumed_to) whatever they are.
        """
        records = [r for r in self.last.checked(records) if r.offset >= self.next_offset]
        if not records:
            return None
        assert records[-1].offset < consumed_to, (records[-1].offset, consumed_to)
        size = narrowing.batch_size(self._narrowing, self.next_offset)
        cut = size is not None and len(records) > size
        if size is not None and cut:
            consumed_to, records = records[size].offset, records[:size]
        last = (records[-1].offset, fingerprint(records[-1]))
        if not narrowing.dead_letter_due(self._narrowing, self.next_offset):
            return self._batch([self._reader.read(r) for r in records], last, consumed_to, cut)
        assert len(records) == 1, "a record is set aside only when it is alone"
        [record] = records
        reason = (
            f"the ledger refused this record {narrowing.RECORD_FAILURES_MAX} times in a row "
            f"({self._last_error}); set aside so that the partition moves on"
        )
        bare = narrowing.bare_dead_letter_due(self._narrowing)
        aside = self._reader.set_aside(record, reason, bare)
        plain = self._batch([self._reader.decode(record)], last, consumed_to, cut)
        control = self._reader.control(min(self._assets.codes, default="GOLD"), self.next_offset)
        probe = self._batch([control], (self.next_offset, b"control"), self.next_offset + 1, False)
        return self._batch([aside], last, consumed_to, cut, (plain, probe))

    def _batch(
        self,
        intakes: list[Intake],
        last: tuple[int, bytes],
        consumed_to: int,
        cut: bool,
        probes: tuple[Admitted, Admitted] | None = None,
    ) -> Admitted:
        """A batch of `intakes` from next_offset to consumed_to; `last` is its last record's
        offset and fingerprint."""
        commands = [i.admitted for i in intakes if isinstance(i.admitted, Command)]
        keys = accounts_named(commands)
        position = BatchPosition(
            topic=self.tp.topic,
            partition=self.tp.partition,
            epoch=self.epoch,
            generation=self.generation,
            first_offset=self.next_offset,
            next_offset=consumed_to,
            last_offset=last[0],
            last_fingerprint=last[1],
        )
        return Admitted(
            worker=self,
            intakes=intakes,
            ids=list({(c.user_id, c.idempotency_key) for c in commands}),
            keys=keys,
            uncached=[k for k in keys if k not in self._accounts],
            assets={asset for _, asset in keys},
            position=position,
            cut=cut,
            references=references_named(commands),
            probes=probes,
        )

    @property
    def narrowing_down(self) -> bool:
        """Whether a failing range is being narrowed down (its batches go alone)."""
        return narrowing.batch_size(self._narrowing, self.next_offset) is not None

    def failed(self, batch: Admitted, error: str, records_fault: bool) -> None:
        """The batch failed alone: narrow the range it covers down (see processor.narrowing)."""
        self._last_error = error
        self._narrowing = narrowing.failed(
            self._narrowing, self.next_offset, len(batch.intakes), batch.position.next_offset,
            records_fault,
        )  # fmt: skip

    def plan(
        self,
        batch: Admitted,
        known: Mapping[IdempotencyId, StoredResult],
        loaded: Mapping[AccountKey, AccountState],
        assets: Assets,
        refs: References = NO_REFERENCES,
        caps: Mapping[AccountKey, Caps] | None = None,
        watched: tuple[tuple[Monitor, ...], Spending] = ((), {}),
    ) -> BatchPlan:
        """Decide the batch; `known`, `loaded`, `caps` and the spending in `watched` may hold
        other partitions' rows too."""
        assert batch.worker is self and batch.position.first_offset == self.next_offset
        # Loaded rows are committed state, safe to cache before this batch commits.
        self._accounts.update((k, loaded[k]) for k in batch.uncached if k in loaded)
        accounts = {k: self._accounts[k] for k in batch.keys if k in self._accounts}
        mine = {i: known[i] for i in batch.ids if i in known}
        found, looked_up = watched
        ctx = BatchContext(
            topic=self.tp.topic,
            partition=self.tp.partition,
            generation=self.generation,
            processed_at=datetime.now(UTC),
            watch=watch(found, self.spending.of(batch.keys, looked_up)) if found else NO_WATCH,
        )
        capped = {k: caps[k] for k in batch.keys if k in caps} if caps else {}
        return plan_batch(ctx, batch.intakes, mine, accounts, assets, refs, capped)

    def committed(self, batch: Admitted, plan: BatchPlan) -> list[OutboxMessage]:
        """The batch is stored: move on, and return what the outbox must publish."""
        self._remember(plan)
        self.spending.committed(plan.spending)
        self._narrowing = narrowing.committed(self._narrowing, batch.position.next_offset)
        self.next_offset = batch.position.next_offset
        self.last.processed(batch.position.last_offset, batch.position.last_fingerprint)
        _log_outcomes(self.tp.partition, batch.intakes, plan.decided)
        return [OutboxMessage.of(row) for row in plan.outbox_rows]

    def _remember(self, plan: BatchPlan) -> None:
        for key, state in plan.accounts.items():
            self._accounts[key] = state
            self._accounts.move_to_end(key)
        while len(self._accounts) > self._config.balance_cache_max:
            self._accounts.popitem(last=False)


def _log_outcomes(partition: int, intakes: Sequence[Intake], decided: Sequence[Outcome]) -> None:
    """One line per record with its command id, user id and partition bound: debug for a
    command, warning for a dead letter (operators watch those). Never the payload or the
    decoder's reason (it may quote the input); the dead-letter topic holds both."""
    bound = log.bind(partition=partition)
    # Asked once per batch: formatting each command's id costs about 1 us even when filtered.
    commands_too = bound.is_enabled_for(logging.DEBUG)
    for intake, outcome in zip(intakes, decided, strict=True):
        if isinstance(intake.admitted, Command):
            if commands_too:
                command = intake.admitted
                bound.debug("command processed", command_id=str(command.command_id),
                            user_id=command.user_id, offset=intake.offset, type=outcome.type,
                            outcome=outcome.outcome, code=outcome.code or None)  # fmt: skip
        else:
            envelope = intake.admitted.envelope
            bound.warning("record dead-lettered", command_id=envelope.command_id,
                          user_id=envelope.user_id, offset=intake.offset,
                          code=outcome.code)  # fmt: skip
