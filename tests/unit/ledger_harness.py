"""A wallet ledger driven the way the processor drives it, without Kafka: each call plans one
batch (after the same lookups: records, accounts, references) and commits it to the in-memory
event store, which enforces what PostgreSQL does. Time is the test's."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

from ledger.account import EMPTY_ACCOUNT, AccountState
from ledger.lots import SpendOrder, at_ms
from ledger.plan import (
    BatchContext,
    BatchPlan,
    Intake,
    ProcessedRow,
    payload_hash,
    plan_batch,
    references_named,
)
from schemas.commands import Command
from storage.event_store import BatchPosition, OutboxMessage
from storage.memory_event_store import MemoryEventStore
from tests.integration.helpers import command

TOPIC = "harness.commands"
START_MS = 1_800_000_000_000


class Ledger:
    """One partition's ledger in memory; `now_ms` is the processor's clock."""

    def __init__(self, order: SpendOrder = SpendOrder.FREE_FIRST) -> None:
        self.store = MemoryEventStore(("GOLD",))
        self.store.assets["GOLD"] = order
        self.now_ms = START_MS
        self._offset = 0
        self._epoch = asyncio.run(self.store.claim_partition(TOPIC, 0, "harness")).epoch

    def send(self, *commands: Command) -> list[ProcessedRow]:
        """Plan and commit one batch of `commands`; their records, in order."""
        return asyncio.run(self._send(commands)).processed_rows

    def one(self, type: str, amount: int | None = None, **fields: Any) -> ProcessedRow:
        """One command of user `u` in GOLD, in a batch of its own."""
        [row] = self.send(command(type, "u", amount, **fields))
        return row

    def account(self) -> AccountState:
        """User `u`'s GOLD as the store loads it (empty before its first transaction)."""
        found = asyncio.run(self.store.load_accounts([("u", "GOLD")]))
        return found.get(("u", "GOLD"), EMPTY_ACCOUNT)

    def later(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)

    async def _send(self, commands: tuple[Command, ...]) -> BatchPlan:
        items = [Intake(self._offset + i, c.user_id.encode(), c.encode(), c, payload_hash(c))
                 for i, c in enumerate(commands)]  # fmt: skip
        store = self.store
        known = await store.find_processed([(c.user_id, c.idempotency_key) for c in commands])
        accounts = await store.load_accounts(list({(c.user_id, c.asset) for c in commands}))
        refs = await store.find_references(*references_named(commands))
        ctx = BatchContext(TOPIC, 0, 0, at_ms(self.now_ms))
        plan = plan_batch(ctx, items, known, accounts, dict(store.assets), refs)
        end = self._offset + len(commands)
        position = BatchPosition(TOPIC, 0, self._epoch, 0, self._offset, end, end - 1, b"f")
        await store.commit_batch(position, plan)
        # What a relay would republish after a crash (rebuilt from the records alone) is what
        # the planner made (with the legs it decided): the same bytes, for every command.
        rebuilt = await store.unpublished(TOPIC, 0, (0, self._offset), len(commands))
        assert rebuilt == [OutboxMessage.of(row) for row in plan.outbox_rows], commands
        self._offset = end
        return plan


def held_for(seconds: int) -> dict[str, Any]:
    return {"expires_in_s": seconds}


def at(ledger: Ledger, seconds: float) -> datetime:
    """A time `seconds` after the ledger's clock (for a credit's expires_at)."""
    return at_ms(ledger.now_ms) + timedelta(seconds=seconds)


def tx(row: ProcessedRow) -> uuid.UUID:
    assert row.transaction_id is not None, row
    return row.transaction_id
