"""`wallet replay`: rebuild the balances projection from the ledger, or re-emit ledger events.

A rebuild runs the live projector's own code into shadow tables (`*_replay`), partition by
partition, with progress reported as it goes; then, in one short transaction that pauses the
live projector (it waits on the checkpoint table's lock), it catches up to the last committed
entry and swaps the rebuilt rows in. The processor never stops; readers see the old rows until
the swap commits, then the new ones. Without `--from-scratch` an interrupted rebuild resumes.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from ledger.plan import event_bytes
from storage.db import Conn
from storage.event_store import PROCESSED_COLUMNS, processed_row
from storage.projection_store import LIVE, REPLAY, apply_next, checkpoint, known_partitions

CHUNK_ENTRIES = 50_000
# The one-pass rebuild is a few statements over the whole ledger: minutes on a large one, far
# past the per-statement WALLET_DB_TIMEOUT_MS meant for the write path; still bounded.
ONE_PASS_STATEMENT_TIMEOUT_S = 3_600.0
REPUBLISH_PAGE = 5_000

Progress = Callable[[int], None]


async def pending_entries(conn: Conn, from_scratch: bool) -> int:
    """How many entries a rebuild has to apply (for the progress bar)."""
    if from_scratch:
        return int(await conn.fetchval("SELECT count(*) FROM ledger_entries"))
    return int(
        await conn.fetchval(
            """
            SELECT count(*) FROM ledger_entries e
              LEFT JOIN projection_checkpoints c
                ON c.projection = $1 AND c.partition = e.partition
             WHERE e.entry_id > coalesce(c.position, 0)
            """,
            REPLAY.checkpoint,
        )
    )


async def rebuild(conn: Conn, from_scratch: bool, progress: Progress) -> int:
    """Rebuild the projection into the shadow tables, then swap it in; return entries applied."""
    applied = await _rebuild_in_one_pass(conn, progress) if from_scratch else 0
    applied += await _catch_up(conn, progress)
    async with conn.transaction():
        # Pauses the live projector: its checkpoint update needs this table.
        await conn.execute("LOCK TABLE projection_checkpoints IN SHARE ROW EXCLUSIVE MODE")
        applied += await _catch_up(conn, progress)
        await conn.execute("DELETE FROM balances")
        await conn.execute("INSERT INTO balances SELECT * FROM balances_replay")
        await conn.execute("DELETE FROM system_totals")
        await conn.execute("INSERT INTO system_totals SELECT * FROM system_totals_replay")
        await conn.execute(
            """
            INSERT INTO projection_checkpoints (projection, partition, position)
            SELECT $1, partition, position FROM projection_checkpoints WHERE projection = $2
            ON CONFLICT (projection, partition) DO UPDATE
               SET position = EXCLUDED.position, updated_at = now(),
                   failures_in_a_row = 0, last_error = NULL, failing_since = NULL
            """,
            LIVE.checkpoint,
            REPLAY.checkpoint,
        )
    return applied


async def _rebuild_in_one_pass(conn: Conn, progress: Progress) -> int:
    """The shadow tables rebuilt from every entry in one snapshot of the ledger, with set-based
    statements instead of the projector's chunks (several times faster: no upsert meets an
    existing row, and each table is written once). The checkpoints are each partition's last
    entry in the snapshot: within a partition entry ids only grow and none becomes visible
    late (one writer commits a partition's batches in order), so every entry up to it is in
    the snapshot, and the chunked catch-up that follows takes what committed after it."""
    async with conn.transaction(isolation="repeatable_read"):
        await conn.execute("TRUNCATE balances_replay, system_totals_replay")
        await conn.execute(
            "DELETE FROM projection_checkpoints WHERE projection = $1", REPLAY.checkpoint
        )
        positions = await conn.fetch(
            "SELECT partition, max(entry_id) AS position, count(*) AS entries"
            " FROM ledger_entries GROUP BY partition",
            timeout=ONE_PASS_STATEMENT_TIMEOUT_S,
        )
        await conn.execute(
            _ONE_PASS_SQL.format(balances=REPLAY.balances, totals=REPLAY.totals),
            timeout=ONE_PASS_STATEMENT_TIMEOUT_S,
        )
        await conn.executemany(
            "INSERT INTO projection_checkpoints (projection, partition, position)"
            " VALUES ($1, $2, $3)",
            [(REPLAY.checkpoint, r["partition"], r["position"]) for r in positions],
        )
    applied = sum(int(r["entries"]) for r in positions)
    progress(applied)
    return applied


# What the projector's chunks add up to (storage.projection_store._APPLY_SQL), in one pass.
_ONE_PASS_SQL = """
WITH latest AS (
    INSERT INTO {balances} (user_id, asset, balance, version, updated_at, paid, held, debt)
    SELECT DISTINCT ON (user_id, asset) user_id, asset, balance_after, version, created_at,
           coalesce(paid_after, 0), coalesce(held_after, 0), coalesce(debt_after, 0)
      FROM ledger_entries WHERE account_kind = 'user'
     ORDER BY user_id, asset, version DESC)
INSERT INTO {totals} (asset, account_kind, total)
SELECT asset, account_kind, sum(amount) FROM ledger_entries
 WHERE account_kind <> 'user' GROUP BY asset, account_kind
"""


async def _catch_up(conn: Conn, progress: Progress) -> int:
    applied = 0
    for partition in await known_partitions(conn):
        position: int | None = await checkpoint(conn, REPLAY, partition)
        while position is not None:  # the rebuild is the shadow checkpoint's only writer
            result = await apply_next(conn, REPLAY, partition, position, CHUNK_ENTRIES)
            if result.count == 0:
                break
            applied += result.count
            progress(result.count)
            position = result.position
    return applied


async def republish(
    conn: Conn,
    producer: AIOKafkaProducer,
    events_topic: str,
    from_entry: int,
    progress: Progress,
) -> int:
    """Send every accepted transaction whose user entry id is >= `from_entry` to the events
    topic again, in ledger order, keyed by user id. Consumers dedupe by `transaction_id`."""
    after, sent = from_entry - 1, 0
    while True:
        rows = await conn.fetch(
            f"""
            SELECT e.entry_id, {", ".join("c." + c for c in PROCESSED_COLUMNS)}
              FROM ledger_entries e
              JOIN processed_commands c ON c.transaction_id = e.transaction_id
             WHERE e.account_kind = 'user' AND e.entry_id > $1
             ORDER BY e.entry_id LIMIT $2
            """,
            after,
            REPUBLISH_PAGE,
        )
        if not rows:
            return sent
        futures = [
            await producer.send(events_topic, event_bytes(processed_row(r)), r["user_id"].encode())
            for r in rows
        ]
        for future in futures:
            await future
        after, sent = rows[-1]["entry_id"], sent + len(rows)
        progress(len(rows))
