"""Helpers for integration tests: run a processor, send commands, read the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg

from commands.client import WalletClient
from processor.service import Processor
from processor.store import PostgresEventStore
from schemas.commands import Command, CommandType
from wallet.db import create_pool
from wallet.settings import Settings


def command(
    type: str, user: str, amount: int, asset: str = "GOLD", key: str | None = None, **extra: Any
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
