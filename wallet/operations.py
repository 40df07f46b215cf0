"""Operator commands' bodies: replay, republish, verify, balance and history tables."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from projections import queries
from projections.replay import pending_entries, rebuild, republish
from projections.verify import CheckResult, verify
from wallet.db import connection
from wallet.kafka import make_producer, start_producer
from wallet.settings import Settings


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeRemainingColumn(),
    )


async def rebuild_projection(settings: Settings, from_scratch: bool) -> tuple[int, float]:
    async with connection(settings) as conn:
        total = await pending_entries(conn, from_scratch)
        started = time.perf_counter()
        with _progress() as bar:
            task = bar.add_task("replay", total=total, rate="0")

            def advance(count: int) -> None:
                done = bar.tasks[0].completed + count
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=count, rate=f"{rate:,.0f}")

            applied = await rebuild(conn, from_scratch, advance)
        return applied, time.perf_counter() - started


async def republish_events(settings: Settings, from_entry: int) -> int:
    producer = make_producer(settings)
    await start_producer(producer, settings)
    try:
        async with connection(settings) as conn:
            with _progress() as bar:
                task = bar.add_task("republish", total=None, rate="")
                return await republish(
                    conn, producer, settings.events_topic, from_entry,
                    lambda n: bar.update(task, advance=n),
                )  # fmt: skip
    finally:
        await producer.stop()


async def run_verify(settings: Settings) -> list[CheckResult]:
    async with connection(settings) as conn:
        return await verify(conn)


async def print_balances(settings: Settings, user_id: str, consistent: bool) -> None:
    async with connection(settings) as conn:
        found = await queries.balances(conn, user_id, consistent)
    table = Table(title=f"{user_id} ({'ledger' if consistent else 'projection'})")
    table.add_column("asset")
    table.add_column("balance", justify="right")
    for asset, amount in found.items():
        table.add_row(asset, f"{amount:,}")
    Console().print(table)


async def print_history(settings: Settings, user_id: str, asset: str | None, limit: int) -> None:
    async with connection(settings) as conn:
        items, _ = await queries.history(conn, user_id, asset, limit, None)
    table = Table(title=f"{user_id}: latest {len(items)} transactions")
    for column in ("time", "type", "asset", "amount", "balance after", "description", "id"):
        table.add_column(
            column, justify="right" if column in ("amount", "balance after") else "left"
        )
    for item in items:
        sign = "+" if item["direction"] == "credit" else "-"
        table.add_row(
            item["time"][:19], item["type"], item["assetId"], f"{sign}{item['amount']:,}",
            f"{item['balanceAfter']:,}", item["description"] or "", item["transactionId"][:8],
        )  # fmt: skip
    Console().print(table)
