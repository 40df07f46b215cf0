"""PostgreSQL's CPU per command on the commit path, for schema or write variants side by side.

Each variant gets a scratch database on the stack's server (`make up` running: it reads
WALLET_DATABASE_URL), migrated, then changed by its SQL file; `as-is` changes nothing and
`no-lots` writes no lot rows (what the lots cost). The same batches of commands (the bench's
mix: top-ups, bonuses and spends over 10,000 users) are planned for each variant and committed
through the event store, one connection each, alternating batch by batch between the variants
so that a shared machine's changes of speed fall on all of them alike. Prints the CPU the
database backend spent per command (from /proc: the server must run on this machine), then
drops the scratch databases.

    .venv/bin/python benchmarks/commit_path.py as-is no-lots [variant.sql ...] [--commands N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from foundation.settings import load_settings
from ledger.account import AccountState, Asset
from ledger.plan import AccountKey, BatchContext, decoded_intakes, plan_batch
from schemas.commands import Command, CommandType
from storage.event_store import BatchPosition, PostgresEventStore
from storage.schema_migrations import migrate

TOPIC = "bench.commit"
BATCH = 1_000
USERS = 10_000
MIX = [CommandType.TOP_UP] * 5 + [CommandType.BONUS] + [CommandType.SPEND] * 4
ASSETS = {"GOLD": Asset()}


def _backend_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a local process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Variant:
    name: str
    database: str
    pool: asyncpg.Pool
    store: PostgresEventStore
    backend_pid: int
    epoch: int
    offset: int = 0
    cpu_s: float = 0.0
    accounts: dict[AccountKey, AccountState] = field(default_factory=dict)

    async def commit(self, commands: list[Command]) -> None:
        ctx = BatchContext(TOPIC, 0, 0, datetime.now(UTC))
        plan = plan_batch(ctx, decoded_intakes(commands, self.offset), {}, self.accounts, ASSETS)
        self.accounts.update(plan.accounts)
        if self.name == "no-lots":
            plan.lots.clear()
        end = self.offset + len(commands)
        position = BatchPosition(TOPIC, 0, self.epoch, 0, self.offset, end, end - 1, b"bench")
        before_s = _backend_cpu_s(self.backend_pid)
        await self.store.commit_batch(position, plan)
        self.cpu_s += _backend_cpu_s(self.backend_pid) - before_s
        self.offset = end


async def _variant(
    admin: asyncpg.Connection, server: str, name: str, change: str | None
) -> Variant:
    database = f"bench_commit_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {database}")
    conn = await asyncpg.connect(f"{server}/{database}", timeout=10)
    try:
        await migrate(conn)
        if change is not None:
            await conn.execute(change)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(f"{server}/{database}", min_size=1, max_size=1)
    assert pool is not None
    store = PostgresEventStore(pool, 120.0)
    claim = await store.claim_partition(TOPIC, 0, "bench")
    pid = await pool.fetchval("SELECT pg_backend_pid()")
    return Variant(name, database, pool, store, pid, claim.epoch, claim.next_offset)


def _command(rng: random.Random) -> Command:
    return Command(
        command_id=uuid.UUID(int=rng.getrandbits(128)),
        idempotency_key=f"{rng.getrandbits(64):x}",
        type=rng.choice(MIX),
        user_id=f"user-{rng.randrange(USERS)}",
        asset="GOLD",
        amount=rng.randint(1, 50),
        sent_at=datetime.now(UTC),
    )


async def run(changes: dict[str, str | None], commands: int) -> None:
    """Commit the same batches into one scratch database per variant (name -> its SQL)."""
    url = load_settings().require_services()[0]
    server = url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(url, timeout=10)
    variants: list[Variant] = []
    try:
        for name, change in changes.items():
            variants.append(await _variant(admin, server, name, change))
        rng = random.Random(1)
        for index in range(commands // BATCH):
            batch = [_command(rng) for _ in range(BATCH)]
            for variant in variants if index % 2 == 0 else variants[::-1]:
                await variant.commit(batch)
        done = commands // BATCH * BATCH
        for variant in variants:
            print(f"{variant.name:>24}: {variant.cpu_s / done * 1e6:6.1f} µs of backend CPU"
                  f" per command ({done:,} commands)")  # fmt: skip
    finally:
        for variant in variants:
            await variant.pool.close()
            await admin.execute(f"DROP DATABASE IF EXISTS {variant.database} WITH (FORCE)")
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="+", help="as-is, no-lots or an SQL file")
    parser.add_argument("--commands", type=int, default=60_000)
    args = parser.parse_args()
    changes = {n: Path(n).read_text() if n.endswith(".sql") else None for n in args.variants}
    asyncio.run(run(changes, args.commands))


if __name__ == "__main__":
    main()
