"""Operator commands' bodies: replay, republish, verify, balance and history tables."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import datetime

import orjson
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from rich import box
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

from foundation.errors import OperatorRequestError
from foundation.settings import Settings
from ledger.plan import alert_values
from messaging.kafka import make_consumer, make_producer, start_producer, topic_partitions
from projections import queries, statements
from projections.replay import pending_entries, rebuild, republish
from projections.verify import EXAMPLES_MAX, CheckResult, verify
from storage.db import Conn, connection
from storage.stalls import stalls
from wallet.status import overdue, waiting_ages

log = structlog.get_logger("wallet.operations")


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
    """The ledger's checks, then the live ones: no partition stalled, no command waiting in
    the log past WALLET_COMMAND_WAIT_MAX_MS (a processor down or stalled holds them there)."""
    async with connection(settings) as conn:
        results = await verify(conn)
        found = await stalls(conn, settings.commands_topic, settings.stall_failures)
        positions = await conn.fetch(
            "SELECT partition, next_offset FROM partition_state WHERE topic = $1",
            settings.commands_topic,
        )
    stalled = [s.describe() for s in found]
    results.append(CheckResult("no partition is stalled", len(stalled), stalled[:EXAMPLES_MAX]))
    bound_s = settings.command_wait_max_ms / 1000
    try:
        ages = await waiting_ages(settings, {r["partition"]: r["next_offset"] for r in positions})
        waiting = overdue(ages, bound_s)
    except (KafkaError, TimeoutError) as exc:
        waiting = [f"the broker did not answer: {exc!r}"]
    name = f"no command has waited in the log longer than {bound_s:.0f} s"
    results.append(CheckResult(name, len(waiting), waiting[:EXAMPLES_MAX]))
    return results


async def request_dead_letter(
    settings: Settings, partition: int, offset: int, reason: str, requested_by: str
) -> bool:
    """Record an operator's request to dead-letter one unprocessed record (append-only: the
    row is the audit record). The partition's owner applies it when it next claims the
    partition, which a stalled partition does before every retry. False if already asked.
    Refused for a record not in the log yet: a typo must not set aside a future command."""
    topic = settings.commands_topic
    log_end = await _log_end(settings, topic, partition)
    if offset >= log_end:
        raise OperatorRequestError(
            f"partition {partition} has no record {offset} yet", log_end=log_end
        )
    async with connection(settings) as conn:
        return await _record_request(conn, topic, partition, offset, reason, requested_by)


async def _log_end(settings: Settings, topic: str, partition: int) -> int:
    if partition not in (await topic_partitions(settings, [topic])).get(topic, ()):
        raise OperatorRequestError(f"{topic} has no partition {partition}")
    timeout_s = settings.kafka_timeout_ms / 1000
    consumer = make_consumer(settings)
    await asyncio.wait_for(consumer.start(), timeout_s)
    try:
        tp = TopicPartition(topic, partition)
        return int((await asyncio.wait_for(consumer.end_offsets([tp]), timeout_s))[tp])
    finally:
        await asyncio.wait_for(consumer.stop(), timeout_s)


async def _record_request(
    conn: Conn, topic: str, partition: int, offset: int, reason: str, requested_by: str
) -> bool:
    async with conn.transaction():
        state = await conn.fetchrow(
            "SELECT generation, next_offset FROM partition_state"
            " WHERE topic = $1 AND partition = $2 FOR UPDATE",
            topic,
            partition,
        )
        generation, next_offset = (state["generation"], state["next_offset"]) if state else (0, 0)
        asked = await conn.fetchval(
            "SELECT 1 FROM dead_letter_requests WHERE topic = $1 AND partition = $2"
            " AND generation = $3 AND source_offset = $4",
            topic, partition, generation, offset,
        )  # fmt: skip
        if asked:
            return False
        if offset < next_offset:
            raise OperatorRequestError(
                f"record {offset} of partition {partition} is already processed",
                next_offset=next_offset,
            )
        await conn.execute(
            "INSERT INTO dead_letter_requests (topic, partition, generation, source_offset,"
            " reason, requested_by) VALUES ($1, $2, $3, $4, $5, $6)",
            topic, partition, generation, offset, reason, requested_by,
        )  # fmt: skip
    log.warning("dead letter requested by an operator", partition=partition, offset=offset,
                requested_by=requested_by, reason=reason)  # fmt: skip
    return True


async def print_balances(
    settings: Settings, user_id: str, consistent: bool, at: datetime | None = None
) -> None:
    columns = ("balance", "paid", "free", "held", "available", "debt")
    async with connection(settings) as conn:
        if at is None:
            found = await queries.balances(conn, user_id, consistent)
            rows = {asset: {"balance": h.total, **h.document()} for asset, h in found.items()}
        else:
            then = await statements.balances_at(conn, user_id, at)
            rows = {asset: a.document() for asset, a in then.items()}
    source = f"ledger at {at.isoformat()}" if at else "ledger" if consistent else "projection"
    table = Table(title=f"{user_id} ({source})")
    table.add_column("asset")
    for column in columns:
        table.add_column(column, justify="right")
    for asset, parts in rows.items():
        table.add_row(asset, *(_figure(parts[c]) for c in columns))
    Console().print(table)


def _figure(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"  # None: a paid part from before lots


async def print_statement(
    settings: Settings,
    user_id: str,
    period: tuple[datetime, datetime],
    asset: str | None,
    as_csv: bool,
) -> None:
    start, end = period
    async with connection(settings) as conn:
        found = await statements.statement(conn, user_id, start, end, asset)
    if as_csv:
        sys.stdout.write(statements.as_csv(found, start, end))
        return
    console = Console()
    for code, s in found.items():
        # Without column rules: eight columns fit the 80 a pipe or a log gets.
        table = Table(title=f"{user_id} {code}: {start.isoformat()} to {end.isoformat()}",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fmt: skip
        for column in ("time", "type", "id"):
            table.add_column(column, no_wrap=True)
        for column in ("change", "balance", "available", "held", "debt"):
            table.add_column(column, justify="right", min_width=len(column))
        table.add_row("", "opening", "", "", *_parts(s.opening.document()))
        for m in s.movements:
            table.add_row(m.time.strftime("%m-%d %H:%M:%S"), m.type, m.transaction_id[:8],
                          f"{m.change:+,}", *_parts(m.after.document()))  # fmt: skip
        table.add_row("", "closing", "", "", *_parts(s.closing.document()))
        console.print(table)


def _parts(document: dict[str, int | None]) -> list[str]:
    return [_figure(document[c]) for c in ("balance", "available", "held", "debt")]


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


async def print_found(settings: Settings, what: str, found_id: uuid.UUID) -> None:
    """A transfer or a purchase as JSON (queries.transfer, queries.purchase)."""
    query = queries.transfer if what == "transfer" else queries.purchase
    async with connection(settings) as conn:
        found = await query(conn, found_id)
    if found is None:
        raise OperatorRequestError(f"no {what} {found_id}")
    sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")


ALERTS_SHOWN_MAX = 1000


async def print_alerts(settings: Settings, minutes: int) -> None:
    """The alerts of the last `minutes`, oldest first, as the alerts topic carries them
    (rebuilt from the records that raised them), one JSON document a line."""
    async with connection(settings) as conn:
        rows = await conn.fetch(
            "SELECT user_id, asset, transaction_id, type, processed_at, alerts::text AS alerts"
            " FROM processed_commands WHERE alerts IS NOT NULL"
            " AND processed_at > now() - make_interval(mins => $1)"
            " ORDER BY processed_at LIMIT $2", minutes, ALERTS_SHOWN_MAX)  # fmt: skip
    for r in rows:
        tx = uuid.UUID(str(r["transaction_id"]))
        values = alert_values(r["alerts"], r["user_id"], r["asset"], tx, r["type"],
                              r["processed_at"])  # fmt: skip
        sys.stdout.write("".join(v.decode() + "\n" for v in values))


async def revenue(conn: Conn, asset: str, start: datetime, end: datetime) -> dict[str, object]:
    """Paid and free currency consumed in [start, end): the revenue and free_spent legs of
    the period's spends, captures and item purchases, less those of its reversals; and what
    conversions took of the asset and granted of it, paid and free (scans of the period's
    ledger entries and records; reports are rare)."""
    assert start.tzinfo is not None and end.tzinfo is not None
    row = await conn.fetchrow(
        """
        SELECT coalesce(sum(amount) FILTER (WHERE account_kind = 'revenue'), 0) AS paid,
               coalesce(sum(amount) FILTER (WHERE account_kind = 'free_spent'), 0) AS free,
               count(DISTINCT transaction_id) AS spends
          FROM ledger_entries
         WHERE asset = $1 AND account_kind IN ('revenue', 'free_spent')
           AND created_at >= $2 AND created_at < $3
        """,
        asset,
        start,
        end,
    )
    converted = await conn.fetchrow(_CONVERTED_SQL, asset, start, end)
    assert row is not None and converted is not None
    return {
        "asset": asset, "from": start.isoformat(), "to": end.isoformat(),
        "paid_consumed": int(row["paid"]), "free_consumed": int(row["free"]),
        "spends": row["spends"],
        "converted_in": {"paid": int(converted["in_paid"]),
                         "free": int(converted["in_total"] - converted["in_paid"])},
        "converted_out": {"paid": int(converted["out_paid"]),
                          "free": int(converted["out_total"] - converted["out_paid"])},
    }  # fmt: skip


# Conversions' costs of an asset (into `exchange`) and grants of it (out of it), with their
# paid parts: a grant keeps the paid share of its cost (ledger.purchases).
_CONVERTED_SQL = """
SELECT coalesce(sum(amount) FILTER (WHERE type = 'conversion'), 0) AS in_total,
       coalesce(sum(consumed_paid) FILTER (WHERE type = 'conversion'), 0) AS in_paid,
       coalesce(sum(amount) FILTER (WHERE type = 'purchase_grant'), 0) AS out_total,
       coalesce(sum(consumed_paid) FILTER (WHERE type = 'purchase_grant'), 0) AS out_paid
  FROM processed_commands
 WHERE asset = $1 AND status = 'accepted' AND type IN ('conversion', 'purchase_grant')
   AND processed_at >= $2 AND processed_at < $3
"""
