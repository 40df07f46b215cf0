"""Helpers for integration tests: run a processor, send commands, read the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from commands.client import WalletClient
from foundation.settings import Settings
from messaging.kafka import make_consumer
from processor.service import Processor
from schemas.commands import Command, CommandType
from storage.db import create_pool
from storage.event_store import PostgresEventStore


def command(
    type: str,
    user: str,
    amount: int | None,
    asset: str = "GOLD",
    key: str | None = None,
    **extra: Any,
) -> Command:
    return Command(
        command_id=uuid.uuid4(),
        idempotency_key=key or uuid.uuid4().hex,
        type=CommandType(type),
        user_id=user,
        asset=asset,
        amount=amount,
        sent_at=datetime.now(UTC),
        **extra,
    )


@contextlib.asynccontextmanager
async def running_processor(settings: Settings) -> AsyncIterator[Processor]:
    """A processor inside this test's event loop, stopped cleanly at the end."""
    pool = await create_pool(settings)
    processor = Processor(settings, PostgresEventStore(pool, settings.db_timeout_ms / 1000))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        yield processor
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()


@contextlib.asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[WalletClient]:
    async with WalletClient(settings) as client:
        yield client


async def send_all(
    client: WalletClient, commands: list[Command], timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Publish every command at once, then wait for every reply."""
    futures = [await client.publish(c) for c in commands]
    await client.flush()
    return list(await asyncio.wait_for(asyncio.gather(*futures), timeout_s))


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `check` (every 20 ms) until it is true; fail after `timeout_s`."""
    for _ in range(int(timeout_s / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never true: {what}")


async def fetch(settings: Settings, sql: str, *args: Any) -> list[asyncpg.Record]:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def balance(settings: Settings, user: str, asset: str = "GOLD") -> int:
    rows = await fetch(
        settings,
        "SELECT balance_after FROM ledger_entries WHERE account_kind = 'user' AND user_id = $1"
        " AND asset = $2 ORDER BY version DESC LIMIT 1",
        user,
        asset,
    )
    return rows[0]["balance_after"] if rows else 0


async def asset_sums(settings: Settings) -> dict[str, int]:
    rows = await fetch(
        settings, "SELECT asset, sum(amount) AS total FROM ledger_entries GROUP BY 1"
    )
    return {r["asset"]: r["total"] for r in rows}


@contextlib.asynccontextmanager
async def running_projector(settings: Settings) -> AsyncIterator[None]:
    """The live projector inside this test's event loop."""
    from wallet.roles import run_projector

    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_projected(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until the projector has applied every committed ledger entry."""
    from storage.projection_store import lag_seconds

    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await lag_seconds(conn) > 0:
            assert asyncio.get_running_loop().time() < deadline, "projector did not catch up"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def audit(settings: Settings) -> dict[str, int]:
    """`wallet verify`'s checks: the number of problems each found."""
    from projections.verify import verify

    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return {r.name: r.problems for r in await verify(conn)}
    finally:
        await conn.close()


async def read_topic(settings: Settings, topic: str, expected: int) -> list[bytes]:
    """The values of `topic` from its start: `expected` of them, or what came within 20 s."""
    consumer = make_consumer(settings, topic, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while len(values) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values += [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    return values


# Refuses any command whose idempotency key matches the pattern (by default, starts with
# 'poison') while refuse_poison holds a row: a real PostgreSQL error, raised by the database for
# those records only, as a value the database cannot store would; '%' refuses every command.
# The SQLSTATE is the test's choice: a record's kind of failure
# (check_violation) or the kind nobody's record causes (disk_full).
_POISON_SQL = """
CREATE TABLE refuse_poison (sqlstate text NOT NULL, pattern text NOT NULL);
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    code text;
    keys text;
BEGIN
    SELECT sqlstate, pattern INTO code, keys FROM refuse_poison LIMIT 1;
    IF code IS NOT NULL AND NEW.idempotency_key LIKE keys THEN
        RAISE EXCEPTION 'refused by the test: %', NEW.description USING ERRCODE = code;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON processed_commands
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def refuse_commands(
    settings: Settings, sqlstate: str | None, pattern: str = "poison%"
) -> None:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        if not await conn.fetchval("SELECT to_regclass('refuse_poison') IS NOT NULL"):
            await conn.execute(_POISON_SQL)
        await conn.execute("DELETE FROM refuse_poison")
        if sqlstate is not None:
            await conn.execute("INSERT INTO refuse_poison VALUES ($1, $2)", sqlstate, pattern)
    finally:
        await conn.close()
