"""The machine's ceiling for the write path: a raw COPY of the rows the service would write.

`wallet bench` runs this after its end-to-end run, on the same commands, so the two figures
come from one run on one machine and their ratio says how close the service is to what
PostgreSQL alone can take. The rows are planned by the processor's own pure planner (before the
clock starts), then copied in batches of the service's size, one transaction each, with
durable commits, on one connection, into scratch tables shaped like the real ones (same
columns, constraints and indexes; not the ledger's check triggers). The scratch schema is
dropped afterwards.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from foundation.settings import Settings
from ledger.account import AccountState, Asset
from ledger.plan import BatchContext, BatchPlan, decoded_intakes, plan_batch
from messaging.kafka import partition_for
from schemas.commands import Command
from storage.db import Conn, connection
from storage.event_store import BATCH_TABLES, batch_rows

_TOPIC = "bench.ceiling"


@dataclass(frozen=True)
class CeilingResult:
    commands: int
    rows: int
    transactions: int
    seconds: float

    @property
    def commands_per_s(self) -> float:
        return self.commands / self.seconds


def plan_rows(commands: list[Command], partitions: int, batch_size: int) -> list[BatchPlan]:
    """The batches the processor would commit for these commands, per partition, in order."""
    by_partition: dict[int, list[Command]] = {}
    for command in commands:
        by_partition.setdefault(partition_for(command.user_id, partitions), []).append(command)
    plans = []
    for partition, mine in sorted(by_partition.items()):
        accounts: dict[tuple[str, str], AccountState] = {}
        for first in range(0, len(mine), batch_size):
            chunk = mine[first : first + batch_size]
            intakes = decoded_intakes(chunk, first)
            ctx = BatchContext(_TOPIC, partition, 0, datetime.now(UTC))
            assets = dict.fromkeys({c.asset for c in chunk}, Asset())
            plan = plan_batch(ctx, intakes, {}, accounts, assets)
            accounts.update(plan.accounts)
            plans.append(plan)
    return plans


async def copy_ceiling(settings: Settings, commands: list[Command]) -> CeilingResult:
    plans = plan_rows(commands, settings.partitions, settings.batch_size_max)
    schema = f"wallet_ceiling_{uuid.uuid4().hex[:8]}"
    async with connection(settings) as conn:
        await _create_scratch(conn, schema)
        try:
            start = time.perf_counter()
            for plan in plans:
                async with conn.transaction():
                    for (table, columns), rows in zip(BATCH_TABLES, batch_rows(plan), strict=True):
                        if rows:
                            await conn.copy_records_to_table(
                                table, schema_name=schema, records=rows, columns=columns
                            )
            seconds = time.perf_counter() - start
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    row_count = sum(len(rows) for plan in plans for rows in batch_rows(plan))
    return CeilingResult(len(commands), row_count, len(plans), seconds)


async def _create_scratch(conn: Conn, schema: str) -> None:
    await conn.execute(f"CREATE SCHEMA {schema}")
    for table, _ in BATCH_TABLES:
        # INCLUDING ALL: defaults, identity, constraints and indexes; triggers are never copied.
        await conn.execute(f"CREATE TABLE {schema}.{table} (LIKE {table} INCLUDING ALL)")
