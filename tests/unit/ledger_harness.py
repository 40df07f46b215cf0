"""A wallet ledger driven the way the processor drives it, without Kafka: each call plans one
batch (after the same lookups: records, accounts, references) and commits it to the in-memory
event store, which enforces what PostgreSQL does. Time is the test's."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

from ledger.account import EMPTY_ACCOUNT, AccountState, Asset
from ledger.lots import SpendOrder, at_ms
from ledger.plan import (
    BatchPlan,
    ProcessedRow,
)
from schemas.commands import Command
from storage.event_store import OutboxMessage
from storage.memory_event_store import MemoryEventStore
from tests.contract.batches import planned_commands
from tests.integration.helpers import command

TOPIC = "harness.commands"
START_MS = 1_800_000_000_000


class Ledger:
    """One partition's ledger in memory; `now_ms` is the processor's clock."""

    def __init__(self, order: SpendOrder = SpendOrder.FREE_FIRST) -> None:
        self.store = MemoryEventStore(("GOLD",))
        self.store.assets["GOLD"] = Asset(order)
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
        store = self.store
        position, plan = await planned_commands(store, TOPIC, 0, self._epoch, self._offset,
                                                commands, at_ms(self.now_ms))  # fmt: skip
        end = position.next_offset
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
