"""Batches the contract tests commit: planned by the real planner on what the store holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from ledger.caps import Caps
from ledger.monitors import NO_WATCH, Watch
from ledger.plan import (
    AccountKey,
    BatchContext,
    BatchPlan,
    accounts_named,
    decoded_intakes,
    plan_batch,
    references_named,
)
from schemas.commands import Command
from storage.event_store import BatchPosition, EventStore
from tests.integration.helpers import command


async def planned_batch(
    store: EventStore,
    topic: str,
    partition: int,
    epoch: int,
    first: int,
    amounts: list[int],
    key: str = "k",
    user: str = "ana",
    keys: list[str] | None = None,
) -> tuple[BatchPosition, BatchPlan]:
    """One user's commands at offsets first..: a top-up of each positive amount, a spend of
    each negative one; idempotency keys `keys`, or f"{key}-{offset}"."""
    keys = keys or [f"{key}-{first + i}" for i in range(len(amounts))]
    commands = [
        command("top_up" if a > 0 else "spend", user, abs(a), key=k)
        for a, k in zip(amounts, keys, strict=True)
    ]
    return await planned_commands(store, topic, partition, epoch, first, commands)


async def planned_commands(
    store: EventStore,
    topic: str,
    partition: int,
    epoch: int,
    first: int,
    commands: Sequence[Command],
    at: datetime | None = None,
    caps: Mapping[AccountKey, Caps] | None = None,
    watch: Watch = NO_WATCH,
) -> tuple[BatchPosition, BatchPlan]:
    """`commands` at offsets first.., planned after the lookups the processor makes, at time
    `at` (default: now), with these daily caps (default: none) and monitors (none)."""
    items = decoded_intakes(commands, first)
    accounts = await store.load_accounts(list(accounts_named(commands)))
    known = await store.find_processed([(c.user_id, c.idempotency_key) for c in commands])
    refs = await store.find_references(*references_named(commands))
    ctx = BatchContext(topic, partition, 0, at or datetime.now(UTC), watch)
    plan = plan_batch(ctx, items, known, accounts, await store.load_assets(), refs, caps or {})
    end = first + len(commands)
    return BatchPosition(topic, partition, epoch, 0, first, end, end - 1, b"fp"), plan
