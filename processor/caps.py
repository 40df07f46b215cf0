"""The daily caps a batch's wallets have (ledger.caps), looked up with its other lookups."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

from ledger.caps import DAY_MS, Caps
from ledger.lots import epoch_ms
from ledger.plan import AccountKey
from storage.event_store import EventStore


class CapsLookup:
    """Shared by a process's batches. Why it asks first whether any wallet is capped at all
    (at most every RECHECK_AFTER_S): most deployments cap no one, or few, and a lookup per
    batch would then be a query for nothing. The cost: a first cap ever set takes up to
    RECHECK_AFTER_S to apply; once any exists, every batch looks its wallets up, so a cap
    set or changed later applies from the next batch."""

    RECHECK_AFTER_S = 1.0  # a query a second per process, while no wallet is capped

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._any = False
        self._checked_at_s = float("-inf")

    async def of(self, keys: Iterable[AccountKey]) -> dict[AccountKey, Caps]:
        """The caps of the capped wallets among `keys`, with what each used today."""
        now_s = time.monotonic()
        if not self._any and now_s - self._checked_at_s > self.RECHECK_AFTER_S:
            self._any = await self._store.any_caps()
            self._checked_at_s = now_s
        if not self._any:
            return {}
        return await self._store.load_caps(list(keys), epoch_ms(datetime.now(UTC)) // DAY_MS)
