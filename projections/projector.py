"""The projection worker: follows each partition's ledger entries and maintains `balances` and
`system_totals`, with its per-partition checkpoint in the same transaction (exactly once).

Why per partition and by entry id: a partition has one writer that commits its batches one
after another, so within a partition entry ids only grow and no entry becomes visible after a
later one. Across partitions that is not true (concurrent commits), so there is no global
position to follow.

Why the checkpoint is moved first in each transaction: it is a compare-and-set (only from the
position this projector read), so two projectors, or a projector and a replay's swap, can never
apply one entry twice; and taking that row lock first gives every writer the same lock order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from wallet import metrics
from wallet.db import (
    ERROR_CHARS_MAX,
    RETRIABLE_DB_ERRORS,
    Conn,
    Failure,
    create_pool,
    failure_kind,
)
from wallet.settings import Settings

log = structlog.get_logger("wallet.projector")
BATCH_ENTRIES_MAX = 20_000
IDLE_SLEEP_S = 0.05
PARTITIONS_REFRESH_S = 5.0
BACKOFF_MAX_S = 5.0
LAG_REFRESH_S = 1.0
HEALTHY_ROUND_S = 60.0  # > the longest round: a batch's statement under db_timeout_ms


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
    SELECT asset, account_kind, user_id, amount, balance_after, version, created_at
      FROM ledger_entries
     WHERE partition = $1 AND entry_id > $2 AND entry_id <= $3),
latest AS (
    SELECT DISTINCT ON (user_id, asset) user_id, asset, balance_after, version, created_at
      FROM batch WHERE account_kind = 'user'
     ORDER BY user_id, asset, version DESC),
upserted AS (
    INSERT INTO {balances} AS b (user_id, asset, balance, version, updated_at)
    SELECT user_id, asset, balance_after, version, created_at FROM latest
    ON CONFLICT (user_id, asset) DO UPDATE
       SET balance = EXCLUDED.balance, version = EXCLUDED.version,
           updated_at = EXCLUDED.updated_at
     WHERE b.version < EXCLUDED.version)
INSERT INTO {totals} AS t (asset, account_kind, total)
SELECT asset, account_kind, sum(amount) FROM batch
 WHERE account_kind <> 'user' GROUP BY asset, account_kind
ON CONFLICT (asset, account_kind) DO UPDATE SET total = t.total + EXCLUDED.total
"""


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


@dataclass(frozen=True, slots=True)
class Applied:
    count: int  # entries projected by this call
    position: int | None  # the checkpoint now; None when another writer moved it (read again)


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


class Projector:
    """Runs the live projection until stopped.

    Why each partition fails on its own: one partition's entries may fail to apply (a total
    past what a column holds once did, on every retry), and a round that stopped at the first
    failure froze the balances of every partition after it. A failing partition is retried
    with its own backoff while the others go on, and its failures are recorded for /ready.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._looped_at_s: float | None = None  # monotonic time the last round ended
        self._partitions: list[int] = []
        self._positions: dict[int, int] = {}  # partition -> our checkpoint, read once, then kept
        self._failures: dict[int, int] = {}  # partition -> steps failed in a row
        self._retry_at_s: dict[int, float] = {}  # partition -> monotonic time to try again

    def health(self) -> dict[str, Any] | None:
        """For /health: None before the first round or when no round ended for a while (a
        database outage does not count: failed rounds end too, with a backoff)."""
        if self._looped_at_s is None or time.monotonic() - self._looped_at_s > HEALTHY_ROUND_S:
            return None
        failing = sorted(p for p, n in self._failures.items() if n)
        return {"partitions": len(self._partitions), "failing": failing}

    async def run(self, stop: asyncio.Event) -> None:
        log.info("projector started")
        refreshed_at_s = lag_at_s = 0.0
        backoff_s = IDLE_SLEEP_S
        while not stop.is_set():
            applied = 0
            try:
                async with self._pool.acquire() as conn:
                    now_s = time.monotonic()
                    if now_s - refreshed_at_s > PARTITIONS_REFRESH_S or not self._partitions:
                        self._partitions = await known_partitions(conn)
                        refreshed_at_s = now_s
                    for partition in self._partitions:
                        applied += await self._step_alone(conn, partition)
                    if now_s - lag_at_s > LAG_REFRESH_S:
                        metrics.PROJECTOR_LAG_SECONDS.set_all(await lag_by_partition(conn))
                        lag_at_s = now_s
                metrics.PROJECTED_ENTRIES.inc(applied)
                backoff_s = IDLE_SLEEP_S
            except RETRIABLE_DB_ERRORS as exc:  # no connection, or no partition list
                log.error("projection failed; retrying", error=repr(exc), backoff_s=backoff_s)
                self._positions.clear()  # a commit whose answer was lost may have moved them
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            self._looped_at_s = time.monotonic()
            metrics.PROJECTOR_FAILURES.set_all(self._failures)
            if applied == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s)
        log.info("projector stopped")

    async def _step_alone(self, conn: Conn, partition: int) -> int:
        """One partition's step; its failure is its own (see the class docstring)."""
        if time.monotonic() < self._retry_at_s.get(partition, 0.0):
            return 0
        try:
            count = await self._step(conn, partition)
        except AssertionError:
            raise
        except Exception as exc:  # the partition is retried later: see the class docstring
            await self._failed(conn, partition, exc)
            return 0
        if self._failures.pop(partition, None) is not None:
            self._retry_at_s.pop(partition, None)
            log.info("projection of the partition recovered", partition=partition)
        return count

    async def _failed(self, conn: Conn, partition: int, exc: Exception) -> None:
        self._positions.pop(partition, None)  # a commit whose answer was lost may have moved it
        failures = self._failures.get(partition, 0) + 1
        self._failures[partition] = failures
        backoff_s = min(IDLE_SLEEP_S * 2**failures, BACKOFF_MAX_S)
        self._retry_at_s[partition] = time.monotonic() + backoff_s
        kind = failure_kind(exc)
        log.error("projection of a partition failed; retrying", partition=partition,
                  failures_in_a_row=failures, error=kind, backoff_s=backoff_s)  # fmt: skip
        with contextlib.suppress(*RETRIABLE_DB_ERRORS):  # the database may be what failed
            await record_failure(conn, LIVE, partition, Failure(failures, kind))

    async def _step(self, conn: Conn, partition: int) -> int:
        after = self._positions.get(partition)
        if after is None:
            after = await checkpoint(conn, LIVE, partition)
        result = await apply_next(conn, LIVE, partition, after)
        if result.position is None:
            self._positions.pop(partition, None)
        else:
            self._positions[partition] = result.position
        return result.count


async def run_projector(settings: Settings, stop: asyncio.Event) -> None:
    """The `wallet projector` entry point's body."""
    pool = await create_pool(settings, size_max=2)
    try:
        projector = Projector(pool)
        await metrics.beside(settings, "projector", projector.health, projector.run(stop))
    finally:
        await pool.close()
