"""The event store: the small interface the partition worker needs, and its asyncpg version.

Every method is one statement or one transaction (a probe is a transaction rolled back). The
batch commit is the heart of the exactly-once design; see `PostgresEventStore.commit_batches`
for why it is shaped as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, overload

import asyncpg
import orjson

from foundation.errors import FencedError
from ledger import purchases
from ledger.account import (
    BALANCE_MAX,
    AccountState,
    Asset,
    Hold,
    HoldKey,
    References,
    Step,
    Target,
)
from ledger.caps import DAY_MS, SPENT_RECORD_TYPES, Caps
from ledger.lots import Lot, SpendOrder, at_ms, next_due_ms, pieces_of
from ledger.monitors import MONITORS_MAX, Monitor, Window, window_number
from ledger.plan import (
    AccountKey,
    BatchPlan,
    EntryRow,
    IdempotencyId,
    LotRow,
    OutboxRow,
    ProcessedRow,
    StoredResult,
    outbox_rows_by_offset,
)
from ledger.reversals import Origin, target_pieces
from storage.db import ERROR_CHARS_MAX, Conn, Failure, translated

# Each table's columns: the plan's rows name their fields after them, in this order.
PROCESSED_COLUMNS = ProcessedRow._fields
ENTRY_COLUMNS = EntryRow._fields
OUTBOX_COLUMNS = OutboxRow._fields
DEAD_LETTER_REQUESTS_MAX = 1_000  # read per claim: an operator names records one at a time
# The tables a batch copies rows into, in the order it writes them (entries need their
# commands first); the lots it opened are copied too, the lots it changed are written after
# them (_LOTS_SQL).
BATCH_TABLES = (
    ("processed_commands", PROCESSED_COLUMNS),
    ("ledger_entries", ENTRY_COLUMNS),
    ("lots", LotRow._fields),
    ("outbox", OUTBOX_COLUMNS),
)


def batch_rows(plan: BatchPlan) -> tuple[Sequence[tuple[object, ...]], ...]:
    """A plan's rows for each of BATCH_TABLES, in the same order."""
    return plan.processed_rows, plan.entry_rows, plan.lots_opened(), plan.stored_outbox_rows()


# The lots that were open before a batch (or that it gave back to), as it leaves them: one
# statement that deletes the lots used up and writes the others (a lot given back to after it
# was used up is inserted again). The lots a batch opens are copied in with its records.
_LOTS_SQL = """
WITH given AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int[], $5::bool[],
                         $6::bigint[], $7::bigint[], $8::timestamptz[])
           AS k(user_id, asset, lot_id, partition, paid, remaining, seq, expires_at)),
closed AS (
    DELETE FROM lots l USING given g
     WHERE g.remaining = 0
       AND l.user_id = g.user_id AND l.asset = g.asset AND l.lot_id = g.lot_id)
INSERT INTO lots AS l (user_id, asset, lot_id, partition, paid, remaining, seq, expires_at)
SELECT user_id, asset, lot_id, partition, paid, remaining, seq, expires_at
  FROM given WHERE remaining > 0
ON CONFLICT (user_id, asset, lot_id) DO UPDATE SET remaining = EXCLUDED.remaining
"""


# The holds a batch opened or resolved, as it leaves them (a hold opened and resolved within
# the batch is written resolved); the number of rows it could not write. A resolution changes
# only an open hold: one of a hold resolved already would be the planner disagreeing with the
# table (it refuses second resolutions), and must never pass silently.
_HOLDS_SQL = """
WITH given AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::uuid[],
                         $6::bigint[], $7::jsonb[], $8::timestamptz[], $9::text[], $10::uuid[],
                         $11::bigint[])
           AS k(user_id, asset, hold_id, partition, transaction_id, amount, pieces,
                expires_at, status, resolved_by, captured)),
resolved AS (
    UPDATE holds h SET status = g.status, resolved_by = g.resolved_by, captured = g.captured
      FROM given g
     WHERE g.status <> 'open' AND h.status = 'open'
       AND h.user_id = g.user_id AND h.asset = g.asset AND h.hold_id = g.hold_id
    RETURNING 1),
inserted AS (
    INSERT INTO holds SELECT * FROM given WHERE status = 'open'
       OR NOT EXISTS (SELECT 1 FROM holds h WHERE h.user_id = given.user_id
                         AND h.asset = given.asset AND h.hold_id = given.hold_id)
    RETURNING 1)
SELECT (SELECT count(*) FROM given) - (SELECT count(*) FROM resolved)
       - (SELECT count(*) FROM inserted)
"""


@dataclass(frozen=True, slots=True)
class PartitionClaim:
    """What a new owner of a partition learns when it takes it over."""

    epoch: int
    generation: int
    next_offset: int
    # The last processed record: where it is (before next_offset, with gaps between them on
    # Kafka) and its fingerprint. None before the partition's first batch or after a reset.
    last_offset: int | None
    last_fingerprint: bytes | None
    published_generation: int
    published_offset: int
    # Records an operator asked to dead-letter (offset -> reason), at or past next_offset.
    forced: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class BatchPosition:
    """Where a batch sits in its partition, and which owner writes it."""

    topic: str
    partition: int
    epoch: int
    generation: int
    first_offset: int  # the partition's stored next_offset when the batch was fetched
    # The consumer's position after the batch: one past its last record, or further when the
    # log holds offsets no consumer sees there (transaction markers, aborted records).
    next_offset: int
    last_offset: int  # the batch's last record
    last_fingerprint: bytes


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    source_offset: int
    generation: int
    key: bytes | None
    reply_topic: str | None
    reply_value: bytes | None
    event_value: bytes | None
    dlq_value: bytes | None
    reply_key: bytes | None = None  # None: the reply's key is `key`
    alert_value: bytes | None = None  # a monitor's alert (ledger.plan.alert_rows)

    @classmethod
    def of(cls, row: OutboxRow) -> OutboxMessage:
        """What the relay needs of a planned outbox row."""
        return cls(row.source_offset, row.generation, row.message_key, row.reply_topic,
                   row.reply_value, row.event_value, row.dlq_value, row.reply_key,
                   row.alert_value)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PublishedMark:
    """Everything of a partition's outbox before (generation, upto) has been published."""

    topic: str
    partition: int
    epoch: int
    generation: int
    upto: int


class EventStore(Protocol):
    """What the write side needs from storage. Implementations (PostgresEventStore,
    storage.memory_event_store.MemoryEventStore) pass tests/contract/."""

    async def claim_partition(
        self, topic: str, partition: int, owner: str, failure: Failure | None = None
    ) -> PartitionClaim: ...

    async def reset_partition(
        self, topic: str, partition: int, epoch: int, log_end_offset: int | None, reason: str
    ) -> PartitionClaim: ...

    async def load_assets(self) -> dict[str, Asset]: ...

    async def load_accounts(self, keys: Sequence[AccountKey]) -> dict[AccountKey, AccountState]: ...

    async def find_processed(
        self, ids: Sequence[IdempotencyId]
    ) -> dict[IdempotencyId, StoredResult]: ...

    async def due_wallets(
        self, partitions: Sequence[int], limit: int
    ) -> list[tuple[str, str, datetime]]: ...

    async def find_references(
        self,
        holds: Sequence[HoldKey],
        targets: Sequence[uuid.UUID],
        receivers: Sequence[str] = (),
    ) -> References: ...

    async def stuck_transfers(
        self, topic: str, partitions: Sequence[int], older_than_ms: int, limit: int
    ) -> list[ProcessedRow]: ...

    async def any_caps(self) -> bool: ...

    async def load_caps(self, keys: Sequence[AccountKey], day: int) -> dict[AccountKey, Caps]: ...

    async def load_monitors(self) -> tuple[Monitor, ...]: ...

    async def load_spending(
        self, keys: Sequence[AccountKey], lengths_s: Sequence[int], now_ms: int
    ) -> dict[AccountKey, dict[int, Window]]: ...

    async def commit_batch(self, position: BatchPosition, plan: BatchPlan) -> None: ...

    async def commit_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None: ...

    async def probe_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None: ...

    async def unpublished(
        self, topic: str, partition: int, after: tuple[int, int], limit: int
    ) -> list[OutboxMessage]: ...

    async def mark_published(self, marks: Sequence[PublishedMark]) -> None: ...

    async def prune_outbox(
        self, marks: Sequence[PublishedMark], keep_rows: int, limit: int
    ) -> int: ...


class _RolledBack(Exception):
    """Raised inside a probe's transaction to roll it back."""


class StaleOffsetError(FencedError):
    """The epoch is ours but the stored offset moved: an earlier commit of ours landed after
    all (its acknowledgement was lost). The worker must reload its position and refetch."""

    code = "stale_offset"


class PostgresEventStore:
    """EventStore on PostgreSQL through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    @translated
    async def claim_partition(
        self, topic: str, partition: int, owner: str, failure: Failure | None = None
    ) -> PartitionClaim:
        # Bumping the epoch takes the row lock: if the previous owner is mid-commit, this waits
        # for it, and afterwards that owner's next commit is refused (its epoch is old).
        # A claim that retries a failed batch also records the failure for /ready and status;
        # any other claim keeps what is recorded (a restart does not hide a stall: only a
        # commit clears it).
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                WITH claimed AS (
                    INSERT INTO partition_state (topic, partition, owner_epoch, owner)
                    VALUES ($1, $2, 1, $3)
                    ON CONFLICT (topic, partition) DO UPDATE
                       SET owner_epoch = partition_state.owner_epoch + 1,
                           owner = EXCLUDED.owner, updated_at = now(),
                           failures_in_a_row = coalesce($4, partition_state.failures_in_a_row),
                           last_error = coalesce($5, partition_state.last_error),
                           failing_since = CASE WHEN $4 IS NULL THEN partition_state.failing_since
                               ELSE coalesce(partition_state.failing_since, now()) END
                    RETURNING topic, partition, owner_epoch, generation, next_offset,
                              last_offset, last_fingerprint)
                SELECT c.*, coalesce(o.published_generation, 0) AS published_generation,
                       coalesce(o.published_offset, 0) AS published_offset
                  FROM claimed c LEFT JOIN outbox_positions o USING (topic, partition)
                """,
                topic,
                partition,
                owner,
                failure.count if failure else None,  # None: no news, keep what is stored
                failure.error[:ERROR_CHARS_MAX] if failure else None,
                timeout=self._timeout_s,
            )
            assert row is not None
            forced = await self._dead_letter_requests(conn, row)
        return _claim(row, forced)

    async def _dead_letter_requests(self, conn: Conn, claim: asyncpg.Record) -> dict[int, str]:
        """The operator's requests for records this owner has yet to process."""
        rows = await conn.fetch(
            "SELECT source_offset, reason, requested_by FROM dead_letter_requests"
            " WHERE topic = $1 AND partition = $2 AND generation = $3 AND source_offset >= $4"
            " ORDER BY source_offset LIMIT $5",
            claim["topic"],
            claim["partition"],
            claim["generation"],
            claim["next_offset"],
            DEAD_LETTER_REQUESTS_MAX,
            timeout=self._timeout_s,
        )
        return {r["source_offset"]: f"{r['reason']} (by {r['requested_by']})" for r in rows}

    @translated
    async def reset_partition(
        self, topic: str, partition: int, epoch: int, log_end_offset: int | None, reason: str
    ) -> PartitionClaim:
        """Start a new generation at offset 0 after the partition's log was replaced.

        Why offset 0 and not the log end: the new log holds commands nobody has processed yet.
        Anything in it that was processed before (a re-sent command) is caught by its
        idempotency key, so starting at 0 may answer some duplicates but never skips one.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT generation, next_offset FROM partition_state"
                " WHERE topic = $1 AND partition = $2 AND owner_epoch = $3 FOR UPDATE",
                topic,
                partition,
                epoch,
                timeout=self._timeout_s,
            )
            if old is None:
                raise FencedError("partition has a newer owner", topic=topic, partition=partition)
            await conn.execute(
                "INSERT INTO partition_resets (topic, partition, old_generation, old_next_offset,"
                " log_end_offset, reason) VALUES ($1, $2, $3, $4, $5, $6)",
                topic,
                partition,
                old["generation"],
                old["next_offset"],
                log_end_offset,
                reason,
                timeout=self._timeout_s,
            )
            row = await conn.fetchrow(
                """
                WITH reset AS (
                    UPDATE partition_state
                       SET generation = generation + 1, next_offset = 0, last_offset = NULL,
                           last_fingerprint = NULL, updated_at = now()
                     WHERE topic = $1 AND partition = $2
                    RETURNING topic, partition, owner_epoch, generation, next_offset,
                              last_offset, last_fingerprint)
                SELECT r.*, coalesce(o.published_generation, 0) AS published_generation,
                       coalesce(o.published_offset, 0) AS published_offset
                  FROM reset r LEFT JOIN outbox_positions o USING (topic, partition)
                """,
                topic,
                partition,
                timeout=self._timeout_s,
            )
        assert row is not None
        return _claim(row, {})

    @translated
    async def load_assets(self) -> dict[str, Asset]:
        """Each asset's code, spend order and balance limit."""
        rows = await self._pool.fetch(
            "SELECT code, spend_order, balance_max FROM assets", timeout=self._timeout_s
        )
        return {r["code"]: Asset(SpendOrder(r["spend_order"]), r["balance_max"] or BALANCE_MAX)
                for r in rows}  # fmt: skip

    @translated
    async def load_accounts(self, keys: Sequence[AccountKey]) -> dict[AccountKey, AccountState]:
        """The latest balance, version and paid part of each (user, asset), with its open
        lots; absent keys have no wallet."""
        if not keys:
            return {}
        rows = await self._pool.fetch(
            """
            SELECT k.user_id, k.asset, e.balance_after, e.version, e.paid_after, e.held_after,
                   e.debt_after, l.*, h.holds
              FROM unnest($1::text[], $2::text[]) AS k(user_id, asset)
              CROSS JOIN LATERAL (
                    SELECT balance_after, version, paid_after, held_after, debt_after
                      FROM ledger_entries
                     WHERE account_kind = 'user' AND user_id = k.user_id AND asset = k.asset
                     ORDER BY version DESC LIMIT 1) AS e
              LEFT JOIN LATERAL (
                    SELECT jsonb_agg(jsonb_build_array(hold_id, transaction_id, amount, pieces,
                                     (extract(epoch FROM expires_at) * 1000)::bigint)
                                     ORDER BY transaction_id) AS holds
                      FROM holds
                     WHERE user_id = k.user_id AND asset = k.asset AND status = 'open'
                       AND e.held_after IS NOT NULL) AS h ON true
              CROSS JOIN LATERAL (
                    SELECT array_agg(lot_id) AS lot_ids, array_agg(paid) AS lot_paid,
                           array_agg(remaining) AS lot_remaining, array_agg(seq) AS lot_seq,
                           array_agg((extract(epoch FROM expires_at) * 1000)::bigint)
                               AS lot_expires_ms
                      FROM lots WHERE user_id = k.user_id AND asset = k.asset) AS l
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            timeout=self._timeout_s,
        )
        return {(r["user_id"], r["asset"]): _account(r) for r in rows}

    @translated
    async def find_processed(
        self, ids: Sequence[IdempotencyId]
    ) -> dict[IdempotencyId, StoredResult]:
        """The recorded outcome for each (user, idempotency key) seen before."""
        if not ids:
            return {}
        rows = await self._pool.fetch(
            """
            SELECT c.user_id, c.idempotency_key, c.payload_hash, c.status, c.error_code,
                   c.error_message, c.transaction_id, c.balance_after, c.type, c.asset, c.amount,
                   c.paid_after, c.consumed_paid, c.expired_amount, c.held_after, c.debt_after,
                   c.hold_id, c.released_amount, c.version
              FROM unnest($1::text[], $2::text[]) AS k(user_id, idempotency_key)
              CROSS JOIN LATERAL (
                    SELECT * FROM processed_commands p
                     WHERE p.user_id = k.user_id AND p.idempotency_key = k.idempotency_key
                     LIMIT 1) AS c
            """,
            [i[0] for i in ids],
            [i[1] for i in ids],
            timeout=self._timeout_s,
        )
        return {
            (r["user_id"], r["idempotency_key"]): StoredResult(
                payload_hash=r["payload_hash"],
                status=r["status"],
                error_code=r["error_code"],
                error_message=r["error_message"],
                # asyncpg's own UUID type is not one orjson (or pickle) knows: use the stdlib's.
                transaction_id=std_uuid(r["transaction_id"]),
                balance_after=r["balance_after"],
                type=r["type"],
                asset=r["asset"],
                amount=r["amount"],
                paid_after=r["paid_after"],
                consumed_paid=r["consumed_paid"],
                expired_amount=r["expired_amount"],
                held_after=r["held_after"],
                debt_after=r["debt_after"],
                hold_id=r["hold_id"],
                released_amount=r["released_amount"],
                version=r["version"],
            )
            for r in rows
        }

    @translated
    async def find_references(
        self,
        holds: Sequence[HoldKey],
        targets: Sequence[uuid.UUID],
        receivers: Sequence[str] = (),
    ) -> References:
        """How each named hold that is no longer open was resolved; each named accepted
        transaction with the lots it took (their origins from the credits that opened them)
        and whether it was reversed; the steps recorded of each named transfer; which of the
        receivers have a wallet (an entry of any asset)."""
        resolved: list[asyncpg.Record] = []
        found: list[asyncpg.Record] = []
        steps: list[asyncpg.Record] = []
        wallets: list[asyncpg.Record] = []
        timeout = self._timeout_s
        async with self._pool.acquire() as conn:
            if holds:
                resolved = await conn.fetch(
                    "SELECT h.user_id, h.asset, h.hold_id, h.status FROM unnest($1::text[],"
                    " $2::text[], $3::text[]) AS k(user_id, asset, hold_id)"
                    " JOIN holds h USING (user_id, asset, hold_id) WHERE h.status <> 'open'",
                    [k[0] for k in holds], [k[1] for k in holds], [k[2] for k in holds],
                    timeout=timeout,
                )  # fmt: skip
            if targets:
                found = await conn.fetch(_TARGETS_SQL, list(targets), timeout=timeout)
                steps = await conn.fetch(_STEPS_SQL, list(targets), timeout=timeout)
            if receivers:
                wallets = await conn.fetch(_WALLETS_SQL, list(set(receivers)), timeout=timeout)
        transfers: dict[uuid.UUID, dict[str, Step]] = {}
        for r in steps:
            step = Step(r["status"], r["error_code"], r["error_message"])
            transfers.setdefault(std_uuid(r["transfer_id"]), {})[r["type"]] = step
        return References(
            {(r["user_id"], r["asset"], r["hold_id"]): r["status"] for r in resolved},
            {std_uuid(r["transaction_id"]): _target(r) for r in found},
            transfers,
            frozenset(r["user_id"] for r in wallets),
        )

    @translated
    async def due_wallets(
        self, partitions: Sequence[int], limit: int
    ) -> list[tuple[str, str, datetime]]:
        """Wallets of the partitions holding a lot or an open hold whose expiry has come:
        (user, asset, the soonest such expiry), at most `limit`, soonest first."""
        rows = await self._pool.fetch(
            """
            SELECT user_id, asset, min(expires_at) AS due_at FROM (
                SELECT user_id, asset, expires_at FROM lots
                 WHERE partition = ANY($1::int[]) AND expires_at <= now()
                UNION ALL
                SELECT user_id, asset, expires_at FROM holds
                 WHERE partition = ANY($1::int[]) AND status = 'open' AND expires_at <= now()
            ) AS due
             GROUP BY user_id, asset ORDER BY due_at LIMIT $2
            """,
            list(partitions),
            limit,
            timeout=self._timeout_s,
        )
        return [(r["user_id"], r["asset"], r["due_at"]) for r in rows]

    @translated
    async def stuck_transfers(
        self, topic: str, partitions: Sequence[int], older_than_ms: int, limit: int
    ) -> list[ProcessedRow]:
        """The records of the partitions whose transfer's next step has not been taken
        `older_than_ms` after them (within a day; `wallet verify` reports older ones): debits
        no credit or refusal followed, refusals no refund followed. At most `limit`."""
        rows = await self._pool.fetch(_STUCK_TRANSFERS_SQL, topic, list(partitions),
                                      older_than_ms, limit, timeout=self._timeout_s)  # fmt: skip
        return [processed_row(r) for r in rows]

    @translated
    async def any_caps(self) -> bool:
        """Whether any wallet has a daily cap (else a batch need not look its wallets up)."""
        return bool(await self._pool.fetchval("SELECT EXISTS (SELECT 1 FROM account_limits)",
                                              timeout=self._timeout_s))  # fmt: skip

    @translated
    async def load_caps(self, keys: Sequence[AccountKey], day: int) -> dict[AccountKey, Caps]:
        """The daily caps of the capped wallets among `keys`, each with what it used on `day`
        (days since the epoch, UTC) as the ledger says (ledger.caps says what counts)."""
        if not keys:
            return {}
        rows = await self._pool.fetch(_CAPS_SQL, [k[0] for k in keys], [k[1] for k in keys],
                                      at_ms(day * DAY_MS), timeout=self._timeout_s)  # fmt: skip
        return {(r["user_id"], r["asset"]): Caps(r["daily_spend_max"],
                                                 r["daily_transfer_out_max"], day, r["spent"],
                                                 r["sent"]) for r in rows}  # fmt: skip

    @translated
    async def load_monitors(self) -> tuple[Monitor, ...]:
        """Every monitor (at most MONITORS_MAX: `wallet monitors add` refuses more)."""
        rows = await self._pool.fetch(
            "SELECT monitor_id, kind, asset, threshold, window_s FROM monitors"
            " ORDER BY monitor_id LIMIT $1", MONITORS_MAX, timeout=self._timeout_s)  # fmt: skip
        return tuple(Monitor(*r) for r in rows)

    @translated
    async def load_spending(
        self, keys: Sequence[AccountKey], lengths_s: Sequence[int], now_ms: int
    ) -> dict[AccountKey, dict[int, Window]]:
        """What each wallet among `keys` spent (ledger.caps says what counts) in the window of
        each length that holds `now_ms` (windows are aligned to the epoch)."""
        if not keys or not lengths_s:
            return {}
        numbers = [window_number(now_ms, n) for n in lengths_s]
        since = [at_ms(k * n * 1000) for k, n in zip(numbers, lengths_s, strict=True)]
        rows = await self._pool.fetch(_SPENDING_SQL, [k[0] for k in keys], [k[1] for k in keys],
                                      list(lengths_s), since, timeout=self._timeout_s)  # fmt: skip
        found: dict[AccountKey, dict[int, Window]] = {}
        number = dict(zip(lengths_s, numbers, strict=True))
        for r in rows:
            windows = found.setdefault((r["user_id"], r["asset"]), {})
            windows[r["length_s"]] = Window(number[r["length_s"]], r["spent"])
        return found

    async def commit_batch(self, position: BatchPosition, plan: BatchPlan) -> None:
        """Write one partition's batch and advance its offset, all or nothing."""
        await self.commit_batches([(position, plan)])

    @translated
    async def commit_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None:
        """Write several partitions' batches and advance their offsets, all or nothing.

        Why the offset update comes first and names each epoch and expected offset: it takes
        the partition rows' locks, so a new owner's claim (which bumps the epoch under the same
        lock) either happened before, and this commit is refused here, or waits until this
        transaction ends, and then reads the offsets it stored. Naming the expected offset also
        refuses a batch that does not start where the last commit ended.

        Why one transaction for many partitions: at low load a step holds a few commands per
        partition, and a transaction each (with its lookups, copies and commit) made the step,
        and so every reply, tens of milliseconds slower. Two zombie owners updating the same
        two rows in opposite orders could deadlock; PostgreSQL breaks it, one side's commit
        fails and is retried, and the fenced one is refused on retry.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await self._write(conn, batches)

    @translated
    async def probe_batches(self, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None:
        """Write the batches as commit_batches would, then roll back: raises what the commit
        would raise, changes nothing. (See processor.narrowing: a control that tells a record
        the database refuses from a database that refuses everything.)"""
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await self._write(conn, batches)
                    raise _RolledBack
            except _RolledBack:
                pass

    async def _write(self, conn: Conn, batches: Sequence[tuple[BatchPosition, BatchPlan]]) -> None:
        assert batches, "nothing to commit"
        for position, _ in batches:
            assert position.first_offset <= position.last_offset < position.next_offset, position
        positions = [position for position, _ in batches]
        moved = await conn.fetch(
            """
            UPDATE partition_state AS s
               SET next_offset = k.next_offset, last_offset = k.last_offset,
                   last_fingerprint = k.fingerprint, updated_at = now(),
                   failures_in_a_row = 0, last_error = NULL, failing_since = NULL
              FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[],
                          $6::bigint[], $7::bigint[], $8::bytea[])
                   AS k(topic, partition, epoch, generation, first_offset, next_offset,
                        last_offset, fingerprint)
             WHERE s.topic = k.topic AND s.partition = k.partition AND s.owner_epoch = k.epoch
               AND s.generation = k.generation AND s.next_offset = k.first_offset
            RETURNING s.topic, s.partition
            """,
            [p.topic for p in positions],
            [p.partition for p in positions],
            [p.epoch for p in positions],
            [p.generation for p in positions],
            [p.first_offset for p in positions],
            [p.next_offset for p in positions],
            [p.last_offset for p in positions],
            [p.last_fingerprint for p in positions],
            timeout=self._timeout_s,
        )
        if len(moved) != len(positions):
            done = {(r["topic"], r["partition"]) for r in moved}
            refused = next(p for p in positions if (p.topic, p.partition) not in done)
            await self._raise_fenced(conn, refused)
        rows = [batch_rows(plan) for _, plan in batches]
        for index, (table, columns) in enumerate(BATCH_TABLES):
            await self._copy(conn, table, columns, [r for per in rows for r in per[index]])
        lots = [lot for _, plan in batches for lot in plan.lots_changed()]
        if lots:
            await conn.execute(_LOTS_SQL, *zip(*lots, strict=True), timeout=self._timeout_s)
        holds = [hold for _, plan in batches for hold in plan.holds.values()]
        if holds:
            unwritten = await conn.fetchval(
                _HOLDS_SQL, *zip(*holds, strict=True), timeout=self._timeout_s
            )
            assert unwritten == 0, f"{unwritten} hold resolutions found no open hold"

    async def _copy(
        self,
        conn: Conn,
        table: str,
        columns: Sequence[str],
        rows: list[tuple[object, ...]],
    ) -> None:
        if rows:
            await conn.copy_records_to_table(
                table, records=rows, columns=columns, timeout=self._timeout_s
            )

    async def _raise_fenced(self, conn: Conn, position: BatchPosition) -> None:
        row = await conn.fetchrow(
            "SELECT owner_epoch, generation, next_offset FROM partition_state"
            " WHERE topic = $1 AND partition = $2",
            position.topic,
            position.partition,
            timeout=self._timeout_s,
        )
        data = {"topic": position.topic, "partition": position.partition}
        if row is None or row["owner_epoch"] != position.epoch:
            raise FencedError("partition has a newer owner", epoch=position.epoch, **data)
        raise StaleOffsetError(
            "stored offset is not where this batch starts",
            expected=position.first_offset,
            stored=row["next_offset"],
            generation=row["generation"],
            **data,
        )

    @translated
    async def unpublished(
        self, topic: str, partition: int, after: tuple[int, int], limit: int
    ) -> list[OutboxMessage]:
        """What the relay must publish at or past the watermark (generation, offset), oldest
        first: the outbox's rows, and each decided command's reply and event rebuilt from its
        idempotency record (the same bytes the planner made; see ledger.plan.outbox_row_of)."""
        args = (topic, partition, after[0], after[1], limit)
        # The records of every offset among the first `limit` whole (a purchase writes several).
        wider = (*args[:4], limit + purchases.RECORDS_MAX)
        async with self._pool.acquire() as conn:
            stored = await conn.fetch(_UNPUBLISHED_OUTBOX_SQL, *args, timeout=self._timeout_s)
            decided = await conn.fetch(_UNPUBLISHED_DECIDED_SQL, *wider, timeout=self._timeout_s)
        messages = [OutboxMessage(*r) for r in stored]
        rows = outbox_rows_by_offset([processed_row(r) for r in decided])
        messages += [OutboxMessage.of(row) for row in rows]
        messages.sort(key=lambda m: (m.generation, m.source_offset))  # stable
        return whole_offsets(messages, limit)

    @translated
    async def mark_published(self, marks: Sequence[PublishedMark]) -> None:
        """Advance each partition's watermark; a mark from a fenced owner changes nothing."""
        if not marks:
            return
        await self._pool.execute(
            """
            INSERT INTO outbox_positions AS o
                   (topic, partition, published_generation, published_offset)
            SELECT k.topic, k.partition, k.generation, k.upto
              FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[])
                   AS k(topic, partition, epoch, generation, upto)
              JOIN partition_state s
                ON s.topic = k.topic AND s.partition = k.partition AND s.owner_epoch = k.epoch
            ON CONFLICT (topic, partition) DO UPDATE
               SET published_generation = EXCLUDED.published_generation,
                   published_offset = EXCLUDED.published_offset
             WHERE (o.published_generation, o.published_offset)
                 < (EXCLUDED.published_generation, EXCLUDED.published_offset)
            """,
            [m.topic for m in marks],
            [m.partition for m in marks],
            [m.epoch for m in marks],
            [m.generation for m in marks],
            [m.upto for m in marks],
            timeout=self._timeout_s,
        )

    @translated
    async def prune_outbox(self, marks: Sequence[PublishedMark], keep_rows: int, limit: int) -> int:
        """Delete published outbox rows older than the newest `keep_rows` of each partition,
        at most `limit` per partition. Walks the primary key from the oldest row, so the cost
        is the rows deleted, whatever the table's size."""
        if not marks:
            return 0
        done = await self._pool.execute(
            """
            DELETE FROM outbox WHERE ctid IN (
                SELECT o.ctid
                  FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[])
                       AS k(topic, partition, generation, below)
                 CROSS JOIN LATERAL (
                       SELECT ctid FROM outbox
                        WHERE topic = k.topic AND partition = k.partition
                          AND (generation, source_offset) < (k.generation, k.below)
                        ORDER BY generation, source_offset
                        LIMIT $5) AS o)
            """,
            [m.topic for m in marks],
            [m.partition for m in marks],
            [m.generation for m in marks],
            [m.upto - keep_rows for m in marks],
            limit,
            timeout=self._timeout_s,
        )
        return int(done.split()[-1])


@overload
def std_uuid(value: uuid.UUID) -> uuid.UUID: ...


@overload
def std_uuid(value: None) -> None: ...


def std_uuid(value: uuid.UUID | None) -> uuid.UUID | None:
    """asyncpg's own UUID type as the standard library's (orjson knows only the latter)."""
    return None if value is None else uuid.UUID(bytes=value.bytes)


# Both in the order of the watermark, each through its table's index on that order.
_UNPUBLISHED_OUTBOX_SQL = """
SELECT source_offset, generation, message_key, reply_topic, reply_value, event_value, dlq_value,
       reply_key, alert_value
  FROM outbox
 WHERE topic = $1 AND partition = $2 AND (generation, source_offset) >= ($3, $4)
 ORDER BY generation, source_offset
 LIMIT $5"""
_UNPUBLISHED_DECIDED_SQL = f"""
SELECT {", ".join(PROCESSED_COLUMNS)}
  FROM processed_commands
 WHERE topic = $1 AND partition = $2 AND generation IS NOT NULL
   AND (generation, source_offset) >= ($3, $4)
 ORDER BY generation, source_offset
 LIMIT $5"""


def whole_offsets(messages: list[OutboxMessage], limit: int) -> list[OutboxMessage]:
    """The first `limit` messages, ordered by offset, cut where an offset ends: the relay's
    watermark says "everything before offset N is published", so a page ending inside a
    purchase's messages would skip the rest of them. An offset with more messages than
    `limit` comes whole."""
    if len(messages) <= limit:
        return messages
    at = [(m.generation, m.source_offset) for m in messages]
    cut = limit
    while cut and at[cut - 1] == at[cut]:
        cut -= 1
    if not cut:
        cut = next((i for i, offset in enumerate(at) if offset != at[0]), len(at))
    return messages[:cut]


def processed_row(row: asyncpg.Record) -> ProcessedRow:
    """A stored idempotency record as the planner made it (asyncpg's UUIDs as the stdlib's);
    other columns the row holds are left out."""
    fields = {name: row[name] for name in PROCESSED_COLUMNS}
    for name in ("command_id", "transaction_id", "reverses", "transfer_id", "purchase_id"):
        fields[name] = std_uuid(fields[name])
    return ProcessedRow(**fields)


def _account(row: asyncpg.Record) -> AccountState:
    """A loaded account with its open lots and holds (asyncpg's UUIDs as the stdlib's),
    checked whole: a state that enters the planner must hold together."""
    columns = ("lot_ids", "lot_paid", "lot_remaining", "lot_seq", "lot_expires_ms")
    found = zip(*(row[c] or () for c in columns), strict=True)
    # In no order: the planner sorts them in their asset's spend order on first use.
    lots = [Lot(std_uuid(i), p, n, q, e) for i, p, n, q, e in found]
    # One JSON document: the holds' pieces are JSON arrays inside it, not strings.
    holds = tuple(
        Hold(hold_id, uuid.UUID(tx), amount, pieces_of(pieces), expires_ms)
        for hold_id, tx, amount, pieces, expires_ms in orjson.loads(row["holds"] or "[]")
    )
    state = AccountState(row["balance_after"], row["version"], row["paid_after"] or 0,
                         tuple(lots), next_due_ms(lots), None, holds, row["held_after"] or 0,
                         row["debt_after"] or 0)  # fmt: skip
    state.check()
    return state


# A day's spends (captures and purchases' costs too) and transfers out of each capped
# wallet, through the records' primary key (user first): only capped wallets, few, are looked at.
_CAPS_SQL = """
SELECT l.user_id, l.asset, l.daily_spend_max, l.daily_transfer_out_max,
       coalesce(sum(c.amount) FILTER (WHERE c.type IN {spent}), 0)::bigint AS spent,
       coalesce(sum(c.amount) FILTER (WHERE c.type = 'transfer'), 0)::bigint AS sent
  FROM unnest($1::text[], $2::text[]) AS k(user_id, asset)
  JOIN account_limits l USING (user_id, asset)
  LEFT JOIN processed_commands c
    ON c.user_id = l.user_id AND c.asset = l.asset AND c.status = 'accepted'
   AND c.type IN {counted} AND c.processed_at >= $3
 GROUP BY 1, 2, 3, 4
""".format(spent=SPENT_RECORD_TYPES, counted=(*SPENT_RECORD_TYPES, "transfer"))
# What wallets spent in the current window of each length, through the records' primary key
# (user first), as the caps' lookup (only when a monitor watches spending).
_SPENDING_SQL = f"""
SELECT k.user_id, k.asset, w.length_s, coalesce(sum(c.amount), 0)::bigint AS spent
  FROM unnest($1::text[], $2::text[]) AS k(user_id, asset)
 CROSS JOIN unnest($3::int[], $4::timestamptz[]) AS w(length_s, since)
  LEFT JOIN processed_commands c
    ON c.user_id = k.user_id AND c.asset = k.asset AND c.status = 'accepted'
   AND c.type IN {SPENT_RECORD_TYPES} AND c.processed_at >= w.since
 GROUP BY 1, 2, 3
"""
# Each half through its partial index on processed_at (migration 012).
_STUCK_TRANSFERS_SQL = f"""
SELECT {", ".join(PROCESSED_COLUMNS)} FROM (
    SELECT * FROM processed_commands d
     WHERE d.type = 'transfer' AND d.status = 'accepted'
       AND d.processed_at BETWEEN now() - interval '1 day'
                              AND now() - $3 * interval '1 millisecond'
       AND d.topic = $1 AND d.partition = ANY($2::int[])
       AND NOT EXISTS (SELECT 1 FROM processed_commands s
                        WHERE s.transfer_id = d.transfer_id AND s.type = 'transfer_in')
    UNION ALL
    SELECT * FROM processed_commands r
     WHERE r.type = 'transfer_in' AND r.status = 'rejected'
       AND r.processed_at BETWEEN now() - interval '1 day'
                              AND now() - $3 * interval '1 millisecond'
       AND r.topic = $1 AND r.partition = ANY($2::int[])
       AND NOT EXISTS (SELECT 1 FROM processed_commands s
                        WHERE s.transfer_id = r.transfer_id AND s.type = 'transfer_refund')
) stuck ORDER BY processed_at LIMIT $4
"""
# A transfer's steps recorded so far (its debit is a target), through their index.
_STEPS_SQL = """
SELECT transfer_id, type, status, error_code, error_message FROM processed_commands
 WHERE transfer_id = ANY($1::uuid[]) AND type IN ('transfer_in', 'transfer_refund')
"""
# A user has a wallet once an entry names them (through the user legs' account index).
_WALLETS_SQL = """
SELECT k.user_id FROM unnest($1::text[]) AS k(user_id)
 WHERE EXISTS (SELECT 1 FROM ledger_entries e
                WHERE e.account_kind = 'user' AND e.user_id = k.user_id)
"""
_TARGETS_SQL = """
SELECT c.transaction_id, c.user_id, c.asset, c.type, c.amount, c.consumed_paid, c.lots_taken,
       c.counterparty,
       c.paid_after IS NULL AS before_lots,
       EXISTS (SELECT 1 FROM processed_commands r
                WHERE r.reverses = c.transaction_id AND r.status = 'accepted') AS reversed,
       (SELECT coalesce(sum((t->>1)::bigint), 0)::bigint FROM processed_commands e
         CROSS JOIN jsonb_array_elements(e.lots_expired) AS t
         WHERE e.user_id = c.user_id AND e.asset = c.asset AND e.lots_expired IS NOT NULL
           AND c.type IN ('top_up', 'bonus') AND (t->>0)::uuid = c.transaction_id) AS expired,
       (SELECT jsonb_agg(jsonb_build_array(
                   o.transaction_id,
                   o.type = 'top_up' OR (o.type = 'purchase_grant' AND o.consumed_paid = o.amount),
                   o.version,
                   floor(extract(epoch FROM o.expires_at) * 1000)::bigint))
          FROM jsonb_array_elements(c.lots_taken) AS t(piece)
          JOIN processed_commands o ON o.transaction_id = (t.piece->>0)::uuid) AS origins
  FROM processed_commands c
 WHERE c.transaction_id = ANY($1::uuid[]) AND c.status = 'accepted'
"""


def _target(row: asyncpg.Record) -> Target:
    """A transaction a reverse names, its pieces with their lots' origins."""
    origins = {uuid.UUID(o[0]): Origin(o[1], o[2], o[3])
               for o in orjson.loads(row["origins"] or "[]")}  # fmt: skip
    taken = orjson.loads(row["lots_taken"] or "[]")
    user, asset = row["user_id"], row["asset"]
    return Target(user, asset, row["type"], row["amount"], row["consumed_paid"],
                  target_pieces(taken, origins, user, asset), row["reversed"],
                  row["before_lots"], row["expired"], row["counterparty"])  # fmt: skip


def _claim(row: asyncpg.Record, forced: dict[int, str]) -> PartitionClaim:
    return PartitionClaim(
        epoch=row["owner_epoch"],
        generation=row["generation"],
        next_offset=row["next_offset"],
        last_offset=row["last_offset"],
        last_fingerprint=row["last_fingerprint"],
        published_generation=row["published_generation"],
        published_offset=row["published_offset"],
        forced=forced,
    )
