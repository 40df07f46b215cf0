"""One partition's worker: decides its fetched batches in order and commits each in one go.

It holds the partition's position, owner epoch and a bounded cache of its users' balances.
The cache is only trusted while this worker owns the partition: it is built after the claim
and updated only after a commit succeeds, so a failed batch leaves no trace in memory.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import struct
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from ledger.decide import AccountState
from ledger.plan import (
    AccountKey,
    BatchContext,
    BatchPlan,
    IdempotencyId,
    Intake,
    Outcome,
    StoredResult,
    decoded_intakes,
    plan_batch,
)
from messaging.kafka import partition_for
from processor import narrowing
from processor.intake import IntakeRules, admit, envelope_of
from schemas.codec import DecodeFailure, Envelope
from schemas.commands import Command, CommandType
from schemas.dead_letters import DecodeErrorCode
from storage.db import Failure
from storage.event_store import BatchPosition, EventStore, OutboxMessage, PartitionClaim

log = structlog.get_logger("wallet.worker")


def fingerprint(record: ConsumerRecord) -> bytes:
    """Identity of a record: a replaced log will not have the same one at the same offset."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(struct.pack(">qq", record.offset, record.timestamp))
    digest.update(record.key or b"")
    digest.update(b"\x00")
    digest.update(record.value or b"")
    return digest.digest()


class AssetCatalog:
    """The asset codes, shared by a process's workers; reloaded when a batch names a new one."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.codes: frozenset[str] = frozenset()

    async def cover(self, codes: set[str]) -> frozenset[str]:
        # Reload before rejecting: a rejection is recorded forever, so it must not come from
        # a stale list (an asset added a second ago by `wallet assets add`).
        if not codes <= self.codes:
            self.codes = await self._store.load_assets()
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
    # Before its one record is set aside as unprocessable, two batches to write and roll
    # back: the record as it is (its cause may be gone by now), then an ordinary command (the
    # control: does the database take anything at all?). See PartitionWorker._control.
    probes: tuple[Admitted, Admitted] | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    owner: str
    balance_cache_max: int  # accounts cached by this partition's worker
    rules: IntakeRules


class PartitionWorker:
    def __init__(
        self, tp: TopicPartition, store: EventStore, assets: AssetCatalog, config: WorkerConfig
    ) -> None:
        self.tp = tp
        self._store = store
        self._assets = assets
        self._config = config
        self._accounts: OrderedDict[AccountKey, AccountState] = OrderedDict()
        self.claim: PartitionClaim | None = None
        self.next_offset = 0
        # The last processed record (offset, fingerprint), None before the first batch.
        self._last: tuple[int, bytes] | None = None
        # That record while it must be re-read and checked before the log is trusted again (a
        # new owner's first fetch, a log that looks short); None once checked.
        self._verify: tuple[int, bytes] | None = None
        # A failing range being narrowed down to its failing record (see processor.narrowing).
        self._narrowing: narrowing.Narrowing | None = None
        self._forced: Mapping[int, str] = {}  # offset -> why an operator dead-letters it
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
        if claim.next_offset != self.next_offset:
            self._narrowing = None  # another owner moved the partition: a new story
        self.next_offset = claim.next_offset
        self._forced = claim.forced
        self._last = None
        if claim.last_offset is not None:
            assert claim.last_fingerprint is not None and claim.last_offset < claim.next_offset
            self._last = (claim.last_offset, claim.last_fingerprint)
        self._verify = self._last

    def verify_again(self) -> bool:
        """Check the last processed record again before taking more records; False when no
        record was processed (nothing to check)."""
        self._verify = self._last
        return self._verify is not None

    def trust_log(self) -> None:
        """Stop waiting for the last record: it is gone for a known, harmless reason."""
        self._verify = None

    @property
    def verifying(self) -> bool:
        return self._verify is not None

    @property
    def fetch_from(self) -> int:
        """Where to seek: the last processed record when it must be checked first."""
        return self._verify[0] if self._verify is not None else self.next_offset

    def log_replaced(self, records: Sequence[ConsumerRecord]) -> str | None:
        """Why the fetched records show a replaced log, or None when they continue ours.

        The records come from a fetch that started at fetch_from. The first one a consumer
        sees there must be the last record we processed: a committed record stays where it
        was (read_committed never hid it from us, or we would not have processed it), so a
        different record, or none until a later offset, means the log is not ours.
        """
        if self._verify is None:
            return None
        offset, expected = self._verify
        first = records[0]
        if first.offset != offset:
            return f"record {offset} is gone: the log continues at {first.offset}"
        if fingerprint(first) != expected:
            return f"record {first.offset} is not the record processed at that offset"
        return None

    def admit(self, records: Sequence[ConsumerRecord], consumed_to: int) -> Admitted | None:
        """Decode the fetched records not processed yet; None when there are none.

        `records` come from one fetch that started at fetch_from, and `consumed_to` is the
        consumer's position after them. Offsets may have gaps (transaction markers, aborted
        records, compaction): the batch covers [next_offset, consumed_to) whatever they are.
        """
        if self._verify is not None:
            assert self.log_replaced(records) is None, "caller must check log_replaced first"
            self._verify = None
            records = records[1:]
        records = [r for r in records if r.offset >= self.next_offset]
        if not records:
            return None
        assert records[-1].offset < consumed_to, (records[-1].offset, consumed_to)
        size = narrowing.batch_size(self._narrowing, self.next_offset)
        cut = size is not None and len(records) > size
        if size is not None and cut:
            consumed_to, records = records[size].offset, records[:size]
        set_aside = narrowing.dead_letter_due(self._narrowing, self.next_offset)
        intakes = [self._intake(r, set_aside and i == 0) for i, r in enumerate(records)]
        last = (records[-1].offset, fingerprint(records[-1]))
        if not set_aside:
            return self._batch(intakes, last, consumed_to, cut)
        assert len(records) == 1, "a record is set aside only when it is alone"
        plain = self._batch([self._decode(records[0])], last, consumed_to, cut)
        return self._batch(intakes, last, consumed_to, cut, (plain, self._control()))

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
        keys = {(c.user_id, c.asset) for c in commands}
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
            assets={c.asset for c in commands},
            position=position,
            cut=cut,
            probes=probes,
        )

    def _control(self) -> Admitted:
        """A made-up top-up of 1 for a user of this partition, never committed: written and
        rolled back to see whether the database takes an ordinary command right now."""
        asset = min(self._assets.codes, default="GOLD")
        command = Command(command_id=uuid.uuid4(), idempotency_key=uuid.uuid4().hex,
                          type=CommandType.TOP_UP, user_id=self._control_user, asset=asset,
                          amount=1, sent_at=datetime.now(UTC))  # fmt: skip
        [intake] = decoded_intakes([command], self.next_offset)
        return self._batch([intake], (self.next_offset, b"control"), self.next_offset + 1, False)

    @functools.cached_property
    def _control_user(self) -> str:
        """A user id of this partition that no producer uses (a control is never committed)."""
        candidates = (f"wallet-control-{i}" for i in itertools.count())
        partitions = self._config.rules.partitions
        return next(u for u in candidates if partition_for(u, partitions) == self.tp.partition)

    def _decode(self, record: ConsumerRecord) -> Intake:
        return admit(self._config.rules, self.tp.partition, record.offset, record.key,
                     record.value)  # fmt: skip

    def _intake(self, record: ConsumerRecord, set_aside: bool) -> Intake:
        """A record decoded, unless an operator or the narrowing set it aside."""
        forced = self._forced.get(record.offset)
        if forced is not None:
            # Not decoded at all: whatever in it stalled the partition is not touched again.
            reason = f"dead-lettered by an operator: {forced}"
            failure = DecodeFailure(DecodeErrorCode.OPERATOR_DEAD_LETTERED, reason, Envelope())
            return Intake(record.offset, record.key, record.value, failure, None)
        intake = self._decode(record)
        if not set_aside:
            return intake
        envelope = Envelope()
        if not narrowing.bare_dead_letter_due(self._narrowing):
            admitted = intake.admitted
            envelope = envelope_of(admitted) if isinstance(admitted, Command) else admitted.envelope
        reason = (
            f"the ledger refused this record {narrowing.RECORD_FAILURES_MAX} times in a row "
            f"({self._last_error}); set aside so that the partition moves on"
        )
        failure = DecodeFailure(DecodeErrorCode.UNPROCESSABLE, reason, envelope)
        return Intake(record.offset, record.key, record.value, failure, None)

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
        assets: frozenset[str],
    ) -> BatchPlan:
        """Decide the batch; `known` and `loaded` may hold other partitions' rows too."""
        assert batch.worker is self and batch.position.first_offset == self.next_offset
        # Loaded rows are committed state, safe to cache before this batch commits.
        self._accounts.update((k, loaded[k]) for k in batch.uncached if k in loaded)
        accounts = {k: self._accounts[k] for k in batch.keys if k in self._accounts}
        mine = {i: known[i] for i in batch.ids if i in known}
        ctx = BatchContext(
            topic=self.tp.topic,
            partition=self.tp.partition,
            generation=self.generation,
            processed_at=datetime.now(UTC),
        )
        return plan_batch(ctx, batch.intakes, mine, accounts, assets)

    def committed(self, batch: Admitted, plan: BatchPlan) -> list[OutboxMessage]:
        """The batch is stored: move on, and return what the outbox must publish."""
        self._remember(plan)
        self._narrowing = narrowing.committed(self._narrowing, batch.position.next_offset)
        self.next_offset = batch.position.next_offset
        self._last = (batch.position.last_offset, batch.position.last_fingerprint)
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
