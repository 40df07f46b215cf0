"""The projection's storage: balances and system totals written from ledger entries, each
partition's checkpoint in the same transaction (exactly once), and the lag and failure rows.

Why per partition and by entry id: a partition has one writer that commits its batches one
after another, so within a partition entry ids only grow and no entry becomes visible after a
later one. Across partitions that is not true (concurrent commits), so there is no global
position to follow.

Why the checkpoint is moved first in each transaction: it is a compare-and-set (only from the
position this projector read), so two projectors, or a projector and a replay's swap, can never
apply one entry twice; and taking that row lock first gives every writer the same lock order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import asyncpg

from ledger.lots import Holding
from storage.db import ERROR_CHARS_MAX, Conn, Failure, translated

BATCH_ENTRIES_MAX = 20_000


@dataclass(frozen=True, slots=True)
class Target:
    """Where a projection is written: the live tables, or the replay's shadow tables."""

    checkpoint: str
    balances: str
    totals: str


LIVE = Target("balances", "balances", "system_totals")
REPLAY = Target("balances_replay", "balances_replay", "system_totals_replay")

# Table names come from the two fixed targets above, never from input.
_APPLY_SQL = """
WITH batch AS (
    SELECT asset, account_kind, user_id, amount, balance_after, version, created_at,
           paid_after, held_after, debt_after
      FROM ledger_entries
     WHERE partition = $1 AND entry_id > $2 AND entry_id <= $3),
latest AS (
    SELECT DISTINCT ON (user_id, asset) user_id, asset, balance_after, version, created_at,
           paid_after, held_after, debt_after
      FROM batch WHERE account_kind = 'user'
     ORDER BY user_id, asset, version DESC),
upserted AS (
    -- An entry from before lots has no paid part (only the newest of each account got one):
    -- 0 stands in until the account's newest entry is applied.
    INSERT INTO {balances} AS b (user_id, asset, balance, version, updated_at, paid, held, debt)
    SELECT user_id, asset, balance_after, version, created_at, coalesce(paid_after, 0),
           coalesce(held_after, 0), coalesce(debt_after, 0)
      FROM latest
    ON CONFLICT (user_id, asset) DO UPDATE
       SET balance = EXCLUDED.balance, version = EXCLUDED.version,
           updated_at = EXCLUDED.updated_at, paid = EXCLUDED.paid, held = EXCLUDED.held,
           debt = EXCLUDED.debt
     WHERE b.version < EXCLUDED.version)
INSERT INTO {totals} AS t (asset, account_kind, total)
SELECT asset, account_kind, sum(amount) FROM batch
 WHERE account_kind <> 'user' GROUP BY asset, account_kind
ON CONFLICT (asset, account_kind) DO UPDATE SET total = t.total + EXCLUDED.total
"""


@dataclass(frozen=True, slots=True)
class Applied:
    count: int  # entries projected by this call
    position: int | None  # the checkpoint now; None when another writer moved it (read again)


class ProjectionStore(Protocol):
    """What the projector needs from storage. Implementations (PostgresProjectionStore,
    storage.memory_projection_store.MemoryProjectionStore) pass tests/contract/."""

    async def known_partitions(self) -> list[int]:
        """Every partition a processor ever claimed."""
        ...

    async def checkpoint(self, target: Target, partition: int) -> int:
        """The last entry id of `partition` projected into `target` (0 for none)."""
        ...

    async def apply_next(
        self, target: Target, partition: int, after: int, limit: int = BATCH_ENTRIES_MAX
    ) -> Applied:
        """Project up to `limit` entries after `after`, moving the checkpoint from `after`
        only (compare-and-set), atomically with the balances and totals."""
        ...

    async def lag_by_partition(self, target: Target) -> dict[int, float]:
        """Per partition, the age in seconds of its oldest entry not yet projected."""
        ...

    async def record_failure(self, target: Target, partition: int, failure: Failure) -> None:
        """A partition's failing steps, kept until its next applied step clears them."""
        ...

    async def balances(self, target: Target, user_id: str) -> dict[str, Holding]:
        """A user's projected holding per asset."""
        ...

    async def totals(self, target: Target) -> dict[tuple[str, str], int]:
        """Each system account's projected total by (asset, account kind)."""
        ...


class PostgresProjectionStore:
    """ProjectionStore on PostgreSQL: each call borrows a pooled connection for the
    functions below (which `wallet replay` also runs on one connection of its own)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translated
    async def known_partitions(self) -> list[int]:
        async with self._pool.acquire() as conn:
            return await known_partitions(conn)

    @translated
    async def checkpoint(self, target: Target, partition: int) -> int:
        async with self._pool.acquire() as conn:
            return await checkpoint(conn, target, partition)

    @translated
    async def apply_next(
        self, target: Target, partition: int, after: int, limit: int = BATCH_ENTRIES_MAX
    ) -> Applied:
        async with self._pool.acquire() as conn:
            return await apply_next(conn, target, partition, after, limit)

    @translated
    async def lag_by_partition(self, target: Target) -> dict[int, float]:
        async with self._pool.acquire() as conn:
            return await lag_by_partition(conn, target)

    @translated
    async def record_failure(self, target: Target, partition: int, failure: Failure) -> None:
        async with self._pool.acquire() as conn:
            await record_failure(conn, target, partition, failure)

    @translated
    async def balances(self, target: Target, user_id: str) -> dict[str, Holding]:
        async with self._pool.acquire() as conn:
            found = await projected_accounts(conn, target, user_id)
        return {asset: Holding(balance, paid, held, debt)
                for asset, (balance, _, paid, held, debt) in sorted(found.items())}  # fmt: skip

    @translated
    async def totals(self, target: Target) -> dict[tuple[str, str], int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT asset, account_kind, total FROM {target.totals}")
            return {(r["asset"], r["account_kind"]): int(r["total"]) for r in rows}


async def known_partitions(conn: Conn) -> list[int]:
    rows = await conn.fetch("SELECT DISTINCT partition FROM partition_state ORDER BY 1")
    return [r["partition"] for r in rows]


async def checkpoint(conn: Conn, target: Target, partition: int) -> int:
    position = await conn.fetchval(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 AND partition = $2",
        target.checkpoint,
        partition,
    )
    return int(position or 0)


async def apply_next(
    conn: Conn, target: Target, partition: int, after: int, limit: int = BATCH_ENTRIES_MAX
) -> Applied:
    """Project the entries of one partition after checkpoint `after` (as the caller last knew
    it). A caller that is the checkpoint's only writer need not read it back each time: if
    another writer moved it meanwhile, the compare-and-set below refuses and says so."""
    row = await conn.fetchrow(
        "SELECT max(entry_id), count(*) FROM (SELECT entry_id FROM ledger_entries"
        " WHERE partition = $1 AND entry_id > $2 ORDER BY entry_id LIMIT $3) AS next",
        partition,
        after,
        limit,
    )
    assert row is not None
    upto, count = row
    if count == 0:
        return Applied(0, after)
    async with conn.transaction():
        moved = await conn.fetchval(
            """
            INSERT INTO projection_checkpoints AS c (projection, partition, position)
            VALUES ($1, $2, $4)
            ON CONFLICT (projection, partition) DO UPDATE
               SET position = EXCLUDED.position, updated_at = now(),
                   failures_in_a_row = 0, last_error = NULL, failing_since = NULL
             WHERE c.position = $3
            RETURNING 1
            """,
            target.checkpoint,
            partition,
            after,
            upto,
        )
        if moved is None:  # another projector (or a replay swap) moved it
            return Applied(0, None)
        await conn.execute(
            _APPLY_SQL.format(balances=target.balances, totals=target.totals),
            partition,
            after,
            upto,
        )
    return Applied(int(count), int(upto))


async def projected_accounts(
    conn: Conn, target: Target, user_id: str
) -> dict[str, tuple[int, int, int, int, int]]:
    """Each asset's (balance, version, paid, held, debt) as the projection has it."""
    rows = await conn.fetch(
        f"SELECT asset, balance, version, paid, held, debt FROM {target.balances}"
        " WHERE user_id = $1",
        user_id,
    )
    return {r["asset"]: (r["balance"], r["version"], r["paid"], r["held"], r["debt"])
            for r in rows}  # fmt: skip


async def lag_by_partition(conn: Conn, target: Target = LIVE) -> dict[int, float]:
    """Per partition, the age of its oldest ledger entry not yet projected (0 when caught up)."""
    rows = await conn.fetch(
        """
        SELECT p.partition, coalesce(extract(epoch FROM now() - e.created_at), 0) AS age_s
          FROM (SELECT DISTINCT partition FROM partition_state) p
          LEFT JOIN projection_checkpoints c
            ON c.projection = $1 AND c.partition = p.partition
          LEFT JOIN LATERAL (
                SELECT created_at FROM ledger_entries
                 WHERE ledger_entries.partition = p.partition
                   AND ledger_entries.entry_id > coalesce(c.position, 0)
                 ORDER BY ledger_entries.entry_id LIMIT 1) e ON true
        """,
        target.checkpoint,
    )
    return {r["partition"]: float(r["age_s"]) for r in rows}


async def lag_seconds(conn: Conn, target: Target = LIVE) -> float:
    """Age of the oldest ledger entry not yet projected, over all partitions (0 when caught up)."""
    return max((await lag_by_partition(conn, target)).values(), default=0.0)


async def record_failure(conn: Conn, target: Target, partition: int, failure: Failure) -> None:
    """Where /ready and `wallet status` see a partition's projection failing (cleared by the
    partition's next applied step)."""
    await conn.execute(
        """
        INSERT INTO projection_checkpoints AS c
               (projection, partition, position, failures_in_a_row, last_error, failing_since)
        VALUES ($1, $2, 0, $3, $4, now())
        ON CONFLICT (projection, partition) DO UPDATE
           SET failures_in_a_row = EXCLUDED.failures_in_a_row, last_error = EXCLUDED.last_error,
               failing_since = coalesce(c.failing_since, now())
        """,
        target.checkpoint,
        partition,
        failure.count,
        failure.error[:ERROR_CHARS_MAX],
    )
