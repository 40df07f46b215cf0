"""The event store in memory, with the rules PostgreSQL enforces for the real one: the epoch
fence, the expected offset, one idempotency record per (user, key), balanced entries whose
balances continue and never go below zero, a watermark only the owner moves. For the
processor's unit tests, and as the second implementation tests/contract/ runs.

A commit checks everything before it changes anything: all or nothing, as a transaction.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import orjson

from foundation.errors import FencedError, StorageRefusedError
from ledger.account import AccountState, Asset, Hold, HoldKey, References, Step, Target
from ledger.caps import DAY_MS, SPENT_RECORD_TYPES, Caps
from ledger.lots import Lot, at_ms, epoch_ms, next_due_ms, pieces_of
from ledger.monitors import Monitor, Window, window_number
from ledger.plan import (
    AccountKey,
    BatchPlan,
    EntryRow,
    HoldRow,
    IdempotencyId,
    OutboxRow,
    ProcessedRow,
    StoredResult,
    outbox_rows_by_offset,
)
from ledger.reversals import Origin, opens_paid_lot, target_pieces
from storage.db import Failure
from storage.event_store import (
    BatchPosition,
    OutboxMessage,
    PartitionClaim,
    PublishedMark,
    StaleOffsetError,
    whole_offsets,
)

PartitionId = tuple[str, int]


@dataclass(frozen=True, slots=True)
class _Partition:
    epoch: int = 0
    generation: int = 0
    next_offset: int = 0
    last: tuple[int, bytes] | None = None
    failure: Failure | None = None


class MemoryEventStore:
    """EventStore in memory (see the module docstring)."""

    def __init__(self, assets: Iterable[str] = ("GOLD", "DIAMONDS")) -> None:
        self.assets = dict.fromkeys(assets, Asset())  # code -> its rules
        # (user, asset) -> (daily spend cap, daily transfer-out cap), as `wallet limits` sets
        self.limits: dict[AccountKey, tuple[int | None, int | None]] = {}
        self.monitors: dict[str, Monitor] = {}  # by id, as `wallet monitors` sets them
        self._partitions: dict[PartitionId, _Partition] = {}
        self._processed: dict[IdempotencyId, ProcessedRow] = {}
        self._accounts: dict[AccountKey, AccountState] = {}  # without their lots
        self.lots: dict[AccountKey, dict[uuid.UUID, Lot]] = {}  # the open lots
        self.holds: dict[HoldKey, HoldRow] = {}  # every hold, open or resolved
        self._partition_of: dict[AccountKey, int] = {}
        self._outbox: dict[PartitionId, dict[tuple[int, int], OutboxRow]] = {}
        self._published: dict[PartitionId, tuple[int, int]] = {}
        self.entries: list[EntryRow] = []  # entry id n is entries[n - 1], as a serial counts

    def partition(self, topic: str, partition: int) -> _Partition:
        """The partition's stored state (for tests)."""
        return self._partitions.get((topic, partition), _Partition())

    def claimed_partitions(self) -> list[int]:
        """Every partition number ever claimed, of any topic."""
        return sorted({partition for _, partition in self._partitions})

    async def claim_partition(
        self, topic: str, partition: int, owner: str, failure: Failure | None = None
    ) -> PartitionClaim:
        state = self.partition(topic, partition)
        state = replace(state, epoch=state.epoch + 1, failure=failure or state.failure)
        self._partitions[(topic, partition)] = state
        return self._claim(topic, partition, state)

    async def reset_partition(
        self, topic: str, partition: int, epoch: int, log_end_offset: int | None, reason: str
    ) -> PartitionClaim:
        state = self.partition(topic, partition)
        if state.epoch != epoch:
            raise FencedError("partition has a newer owner", topic=topic, partition=partition)
        state = replace(state, generation=state.generation + 1, next_offset=0, last=None)
        self._partitions[(topic, partition)] = state
        return self._claim(topic, partition, state)

    def _claim(self, topic: str, partition: int, state: _Partition) -> PartitionClaim:
        published = self._published.get((topic, partition), (0, 0))
        return PartitionClaim(
            epoch=state.epoch, generation=state.generation, next_offset=state.next_offset,
            last_offset=state.last[0] if state.last else None,
            last_fingerprint=state.last[1] if state.last else None,
            published_generation=published[0], published_offset=published[1], forced={},
        )  # fmt: skip

    async def load_assets(self) -> dict[str, Asset]:
        return dict(self.assets)

    async def load_accounts(self, keys: Sequence[AccountKey]) -> dict[AccountKey, AccountState]:
        found = {}
        for key in (k for k in keys if k in self._accounts):
            lots = list(self.lots.get(key, {}).values())
            holds = tuple(
                Hold(h.hold_id, h.transaction_id, h.amount, pieces_of(orjson.loads(h.pieces)),
                     epoch_ms(h.expires_at))
                for (user, asset, _), h in self.holds.items()
                if (user, asset) == key and h.status == "open"
            )  # fmt: skip
            found[key] = self._accounts[key]._replace(lots=tuple(lots), due_ms=next_due_ms(lots),
                                                      holds=holds)  # fmt: skip
            found[key].check()
        return found

    async def find_references(
        self,
        holds: Sequence[HoldKey],
        targets: Sequence[uuid.UUID],
        receivers: Sequence[str] = (),
    ) -> References:
        resolved = {k: self.holds[k].status for k in holds
                    if k in self.holds and self.holds[k].status != "open"}  # fmt: skip
        accepted = {r.transaction_id: r for r in self._processed.values() if r.transaction_id}
        found = {tx: self._target(accepted[tx], accepted) for tx in targets if tx in accepted}
        transfers: dict[uuid.UUID, dict[str, Step]] = {}
        for r in self._processed.values():
            if (
                r.transfer_id is not None
                and r.transfer_id in targets
                and r.type in ("transfer_in", "transfer_refund")
            ):
                step = Step(r.status, r.error_code, r.error_message)
                transfers.setdefault(r.transfer_id, {})[r.type] = step
        wallets = frozenset(u for u in receivers if any(k[0] == u for k in self._accounts))
        return References(resolved, found, transfers, wallets)

    def _target(self, row: ProcessedRow, accepted: Mapping[uuid.UUID, ProcessedRow]) -> Target:
        """An accepted transaction as a reverse or a transfer's step finds it."""
        assert row.amount is not None and row.transaction_id is not None
        tx = row.transaction_id
        reversed_ = any(r.reverses == tx for r in accepted.values())
        taken = orjson.loads(row.lots_taken or "[]")
        origins = {
            uuid.UUID(i): Origin(
                opens_paid_lot(o.type, o.amount, o.consumed_paid), o.version or 0, _ms(o.expires_at)
            )
            for i, _ in taken
            if (o := accepted.get(uuid.UUID(i))) is not None
        }
        pieces = target_pieces(taken, origins, row.user_id, row.asset)
        expired = sum(
            n
            for r in accepted.values()
            if (r.user_id, r.asset) == (row.user_id, row.asset)
            for i, n in orjson.loads(r.lots_expired or "[]")
            if uuid.UUID(i) == tx
        )
        return Target(row.user_id, row.asset, row.type, row.amount, row.consumed_paid, pieces,
                      reversed_, row.paid_after is None,
                      expired if row.type in ("top_up", "bonus") else 0,
                      row.counterparty)  # fmt: skip

    async def any_caps(self) -> bool:
        return bool(self.limits)

    async def load_caps(self, keys: Sequence[AccountKey], day: int) -> dict[AccountKey, Caps]:
        since = at_ms(day * DAY_MS)
        found = {}
        for key in (k for k in keys if k in self.limits):
            done = [r for r in self._processed.values()
                    if (r.user_id, r.asset) == key and r.status == "accepted"
                    and r.processed_at >= since and r.amount is not None]  # fmt: skip
            spent = sum(r.amount or 0 for r in done if r.type in SPENT_RECORD_TYPES)
            sent = sum(r.amount or 0 for r in done if r.type == "transfer")
            found[key] = Caps(*self.limits[key], day, spent, sent)
        return found

    async def load_monitors(self) -> tuple[Monitor, ...]:
        return tuple(sorted(self.monitors.values()))

    async def load_spending(
        self, keys: Sequence[AccountKey], lengths_s: Sequence[int], now_ms: int
    ) -> dict[AccountKey, dict[int, Window]]:
        found: dict[AccountKey, dict[int, Window]] = {}
        for key in keys:
            for length in lengths_s:
                number = window_number(now_ms, length)
                since = at_ms(number * length * 1000)
                spent = sum(
                    r.amount or 0 for r in self._processed.values()
                    if (r.user_id, r.asset) == key and r.status == "accepted"
                    and r.type in SPENT_RECORD_TYPES and r.processed_at >= since
                )  # fmt: skip
                found.setdefault(key, {})[length] = Window(number, spent)
        return found

    async def stuck_transfers(
        self, topic: str, partitions: Sequence[int], older_than_ms: int, limit: int
    ) -> list[ProcessedRow]:
        now = datetime.now(UTC)
        steps = {(r.transfer_id, r.type) for r in self._processed.values() if r.transfer_id}
        waiting = {("transfer", "accepted"): "transfer_in",
                   ("transfer_in", "rejected"): "transfer_refund"}  # fmt: skip
        stuck = [
            r for r in self._processed.values()
            if (next_step := waiting.get((r.type, r.status))) is not None
            and (r.transfer_id, next_step) not in steps
            and (r.topic, r.partition in partitions) == (topic, True)
            and timedelta(milliseconds=older_than_ms) <= now - r.processed_at <= timedelta(days=1)
        ]  # fmt: skip
        return stuck[:limit]

    async def due_wallets(
        self, partitions: Sequence[int], limit: int
    ) -> list[tuple[str, str, datetime]]:
        now_ms = epoch_ms(datetime.now(UTC))
        expiries: dict[AccountKey, list[int]] = {}
        for key, open_lots in self.lots.items():
            expiries.setdefault(key, []).extend(
                lot.expires_ms for lot in open_lots.values() if lot.expires_ms is not None
            )
        for (user, asset, _), hold in self.holds.items():
            if hold.status == "open":
                expiries.setdefault((user, asset), []).append(epoch_ms(hold.expires_at))
        due = []
        for (user, asset), times in expiries.items():
            passed = [ms for ms in times if ms <= now_ms]
            if passed and self._partition_of.get((user, asset)) in partitions:
                due.append((user, asset, at_ms(min(passed))))
        return sorted(due, key=lambda d: d[2])[:limit]

    async def find_processed(
        self, ids: Sequence[IdempotencyId]
    ) -> dict[IdempotencyId, StoredResult]:
        return {key: self._processed[key].result() for key in ids if key in self._processed}

    async def commit_batch(self, position: BatchPosition, plan: BatchPlan) -> None:
        await self.commit_batches([(position, plan)])

    async def commit_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None:
        accounts = self._check(batches)
        self._apply(batches, accounts)

    async def probe_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None:
        self._check(batches)

    def _check(
        self, batches: Sequence[tuple[BatchPosition, BatchPlan]]
    ) -> dict[AccountKey, AccountState]:
        """Every rule the commit must keep, checked before anything changes; returns the
        accounts as the batches leave them."""
        assert batches, "nothing to commit"
        for position, _ in batches:
            assert position.first_offset <= position.last_offset < position.next_offset, position
            self._check_position(position)
        processed = [r for _, plan in batches for r in plan.processed_rows]
        keys = Counter((r.user_id, r.idempotency_key) for r in processed)
        if any(n > 1 or key in self._processed for key, n in keys.items()):
            raise _refused("23505", "an idempotency record exists already")
        entries = [r for _, plan in batches for r in plan.entry_rows]
        self._check_holds([h for _, plan in batches for h in plan.holds.values()])
        return self._check_entries(entries, processed)

    def _check_holds(self, holds: list[HoldRow]) -> None:
        """An opened hold is new (the primary key); a resolution finds its hold open, or new
        in this batch (else the planner and the table disagree: see _HOLDS_SQL)."""
        for hold in holds:
            known = self.holds.get((hold.user_id, hold.asset, hold.hold_id))
            if hold.status == "open" and known is not None:
                raise _refused("23505", "a hold of this name exists already")
            assert known is None or known.status == "open" or hold.status == "open", (
                f"a resolution of {hold.hold_id} found no open hold"
            )

    def _check_position(self, position: BatchPosition) -> None:
        state = self.partition(position.topic, position.partition)
        data = {"topic": position.topic, "partition": position.partition}
        if state.epoch != position.epoch:
            raise FencedError("partition has a newer owner", epoch=position.epoch, **data)
        if state.generation != position.generation or state.next_offset != position.first_offset:
            raise StaleOffsetError("stored offset is not where this batch starts",
                                   expected=position.first_offset, stored=state.next_offset,
                                   generation=state.generation, **data)  # fmt: skip

    def _check_entries(
        self, entries: list[EntryRow], processed: list[ProcessedRow]
    ) -> dict[AccountKey, AccountState]:
        sums: Counter[object] = Counter()
        legs: Counter[object] = Counter()
        users: Counter[object] = Counter()
        for entry in entries:
            sums[entry.transaction_id] += entry.amount
            legs[entry.transaction_id] += 1
            users[entry.transaction_id] += entry.account_kind == "user"
        if (any(sums.values()) or any(not 2 <= n <= 8 for n in legs.values())
                or any(n != 1 for n in users.values())):  # fmt: skip
            raise _refused("23514", "ledger entries of a transaction do not balance")
        accepted = {r.transaction_id for r in processed if r.status == "accepted"}
        accounts = dict(self._accounts)
        for entry in (e for e in entries if e.account_kind == "user"):
            assert entry.user_id is not None and entry.balance_after is not None
            assert entry.version is not None
            if entry.transaction_id not in accepted:
                raise _refused("23503", "entries do not match an accepted command")
            before = accounts.get((entry.user_id, entry.asset), AccountState(0, 0))
            after = AccountState(
                entry.balance_after,
                entry.version,
                entry.paid_after or 0,
                held=entry.held_after or 0,
                debt=entry.debt_after or 0,
            )
            if (after.version != before.version + 1 or after.balance < 0
                    or before.balance + entry.amount != after.balance):  # fmt: skip
                raise _refused("23514", "an entry does not continue its account's balance")
            accounts[(entry.user_id, entry.asset)] = after
        return accounts

    def _apply(
        self,
        batches: Sequence[tuple[BatchPosition, BatchPlan]],
        accounts: Mapping[AccountKey, AccountState],
    ) -> None:
        for position, plan in batches:
            here = (position.topic, position.partition)
            last = (position.last_offset, position.last_fingerprint)
            self._partitions[here] = replace(self._partitions[here],
                                             next_offset=position.next_offset, last=last,
                                             failure=None)  # fmt: skip
            for processed in plan.processed_rows:
                self._processed[(processed.user_id, processed.idempotency_key)] = processed
            self.entries += plan.entry_rows
            for lot in plan.lots.values():
                open_lots = self.lots.setdefault((lot.user_id, lot.asset), {})
                self._partition_of[(lot.user_id, lot.asset)] = lot.partition
                open_lots.pop(lot.lot_id, None)
                if lot.remaining:
                    expires_ms = None if lot.expires_at is None else epoch_ms(lot.expires_at)
                    open_lots[lot.lot_id] = Lot(lot.lot_id, lot.paid, lot.remaining, lot.seq,
                                                expires_ms)  # fmt: skip
            for key, hold in plan.holds.items():
                self._partition_of[key[:2]] = hold.partition
                self.holds[key] = hold
            outbox = self._outbox.setdefault(here, {})
            for row in plan.stored_outbox_rows():
                outbox[(row.generation, row.source_offset)] = row
        self._accounts.update(accounts)

    async def unpublished(
        self, topic: str, partition: int, after: tuple[int, int], limit: int
    ) -> list[OutboxMessage]:
        decided = sorted((r for r in self._processed.values()
                          if (r.topic, r.partition) == (topic, partition)),
                         key=lambda r: (r.generation, r.source_offset))  # fmt: skip
        rows = list(self._outbox.get((topic, partition), {}).values())
        rows += outbox_rows_by_offset(decided)
        rows.sort(key=lambda r: (r.generation, r.source_offset))  # stable: a purchase's in order
        messages = [OutboxMessage.of(r) for r in rows if (r.generation, r.source_offset) >= after]
        return whole_offsets(messages, limit)

    async def mark_published(self, marks: Sequence[PublishedMark]) -> None:
        for mark in marks:
            here = (mark.topic, mark.partition)
            if self.partition(*here).epoch != mark.epoch:
                continue  # a fenced owner's mark changes nothing
            self._published[here] = max(self._published.get(here, (0, 0)),
                                        (mark.generation, mark.upto))  # fmt: skip

    async def prune_outbox(self, marks: Sequence[PublishedMark], keep_rows: int, limit: int) -> int:
        deleted = 0
        for mark in marks:
            outbox = self._outbox.get((mark.topic, mark.partition), {})
            old = sorted(p for p in outbox if p < (mark.generation, mark.upto - keep_rows))
            for position in old[:limit]:
                del outbox[position]
            deleted += len(old[:limit])
        return deleted


def _ms(at: datetime | None) -> int | None:
    return None if at is None else epoch_ms(at)


def _refused(sqlstate: str, message: str) -> StorageRefusedError:
    return StorageRefusedError(message, sqlstate=sqlstate, records_fault=True)
