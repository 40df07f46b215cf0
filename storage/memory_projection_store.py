"""The projection store in memory, projecting a MemoryEventStore's entries with the rules of
the real one: per partition by entry id, the checkpoint moved only from where the caller read
it (compare-and-set), a balance replaced only by a later version, system totals summed. For
the projector's unit tests, and as the second implementation tests/contract/ runs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from ledger.lots import Holding
from ledger.plan import EntryRow
from storage.db import Failure
from storage.memory_event_store import MemoryEventStore
from storage.projection_store import BATCH_ENTRIES_MAX, Applied, Target


class MemoryProjectionStore:
    """ProjectionStore in memory (see the module docstring)."""

    def __init__(self, ledger: MemoryEventStore) -> None:
        self._ledger = ledger
        self._checkpoints: dict[tuple[str, int], int] = {}
        # target -> (user, asset) -> (balance, version, paid)
        self._balances: dict[str, dict[tuple[str, str], tuple[int, int, int, int, int]]] = {}
        self._totals: dict[str, Counter[tuple[str, str]]] = {}
        self.failures: dict[tuple[str, int], Failure] = {}  # (checkpoint, partition) -> failure

    async def known_partitions(self) -> list[int]:
        return self._ledger.claimed_partitions()

    async def checkpoint(self, target: Target, partition: int) -> int:
        return self._checkpoints.get((target.checkpoint, partition), 0)

    def _after(self, partition: int, after: int) -> list[tuple[int, EntryRow]]:
        later = enumerate(self._ledger.entries[after:], after + 1)
        return [(entry_id, e) for entry_id, e in later if e.partition == partition]

    async def apply_next(
        self, target: Target, partition: int, after: int, limit: int = BATCH_ENTRIES_MAX
    ) -> Applied:
        batch = self._after(partition, after)[:limit]
        if not batch:
            return Applied(0, after)
        key = (target.checkpoint, partition)
        if self._checkpoints.get(key, 0) != after:
            return Applied(0, None)  # another writer moved it
        balances = self._balances.setdefault(target.balances, {})
        totals = self._totals.setdefault(target.totals, Counter())
        for _, entry in batch:
            if entry.account_kind != "user":
                totals[(entry.asset, entry.account_kind)] += entry.amount
                continue
            assert entry.user_id is not None and entry.balance_after is not None
            assert entry.version is not None
            account = (entry.user_id, entry.asset)
            if balances.get(account, (0, 0, 0, 0, 0))[1] < entry.version:
                balances[account] = (entry.balance_after, entry.version, entry.paid_after or 0,
                                     entry.held_after or 0, entry.debt_after or 0)  # fmt: skip
        self._checkpoints[key] = batch[-1][0]
        self.failures.pop(key, None)
        return Applied(len(batch), batch[-1][0])

    async def lag_by_partition(self, target: Target) -> dict[int, float]:
        now = datetime.now(UTC)
        lags = {}
        for partition in self._ledger.claimed_partitions():
            pending = self._after(partition, await self.checkpoint(target, partition))
            age_s = (now - pending[0][1].created_at).total_seconds() if pending else 0.0
            lags[partition] = age_s
        return lags

    async def record_failure(self, target: Target, partition: int, failure: Failure) -> None:
        self.failures[(target.checkpoint, partition)] = failure

    async def balances(self, target: Target, user_id: str) -> dict[str, Holding]:
        balances = self._balances.get(target.balances, {})
        return {
            asset: Holding(balance, paid, held, debt)
            for (user, asset), (balance, _, paid, held, debt) in sorted(balances.items())
            if user == user_id
        }

    async def totals(self, target: Target) -> dict[tuple[str, str], int]:
        return dict(self._totals.get(target.totals, Counter()))
