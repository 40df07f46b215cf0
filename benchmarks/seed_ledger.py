"""Fill a wallet database with N accepted commands (2N ledger entries) for read-side benchmarks.

Writes through the processor's own planning and event store (minus Kafka), so the rows are
exactly what the service writes. Usage, with the stack from `make up` running:
    .venv/bin/python benchmarks/seed_ledger.py --commands 500000 --users 100000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime

from foundation.settings import load_settings
from ledger.account import Assets
from ledger.plan import BatchContext, decoded_intakes, plan_batch
from messaging.kafka import partition_for
from schemas.commands import Command, CommandType
from storage.db import create_pool
from storage.event_store import BatchPosition, PostgresEventStore, PublishedMark

TOPIC = "seed.commands"
BATCH = 5_000


async def seed(commands: int, users: int, partitions: int) -> None:
    settings = load_settings()
    pool = await create_pool(settings)
    store = PostgresEventStore(pool, 120.0)
    run = uuid.uuid4().hex[:6]
    rng = random.Random(1)
    assets = await store.load_assets()
    claims = {p: await store.claim_partition(TOPIC, p, "seed") for p in range(partitions)}
    offsets = {p: claims[p].next_offset for p in range(partitions)}
    started, written = time.perf_counter(), 0
    while written < commands:
        by_partition: dict[int, list[Command]] = {}
        for i in range(min(BATCH, commands - written)):
            user = f"seed-{run}-{rng.randrange(users)}"
            command = Command(command_id=uuid.uuid4(), idempotency_key=f"{written + i}",
                              type=CommandType.TOP_UP, user_id=user, asset="GOLD",
                              amount=rng.randint(1, 1000), sent_at=datetime.now(UTC))  # fmt: skip
            by_partition.setdefault(partition_for(user, partitions), []).append(command)
        for partition, batch in by_partition.items():
            await _write(
                store, assets, claims[partition].epoch, partition, offsets[partition], batch
            )
            offsets[partition] += len(batch)
        written += sum(len(b) for b in by_partition.values())
        print(
            f"\r{written:,} commands ({written / (time.perf_counter() - started):,.0f}/s)", end=""
        )
    print()
    # Settle before anything is timed: otherwise autovacuum works through the new rows during
    # the replay that follows and the figure depends on when it started.
    await pool.execute("VACUUM (ANALYZE) ledger_entries, processed_commands, outbox", timeout=600)
    await pool.close()


async def _write(
    store: PostgresEventStore,
    assets: Assets,
    epoch: int,
    partition: int,
    first: int,
    batch: list[Command],
) -> None:
    items = decoded_intakes(batch, first)
    accounts = await store.load_accounts(list({(c.user_id, c.asset) for c in batch}))
    ctx = BatchContext(TOPIC, partition, 0, datetime.now(UTC))
    plan = plan_batch(ctx, items, {}, accounts, assets)
    end = first + len(batch)
    position = BatchPosition(TOPIC, partition, epoch, 0, first, end, end - 1, b"seed")
    await store.commit_batch(position, plan)
    # Seeded commands have no reply consumer; mark their outbox rows out, as the relay would.
    await store.mark_published([PublishedMark(TOPIC, partition, epoch, 0, first + len(batch))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=500_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=12)
    args = parser.parse_args()
    asyncio.run(seed(args.commands, args.users, args.partitions))


if __name__ == "__main__":
    main()
