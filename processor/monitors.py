"""The monitors watching a batch (ledger.monitors), looked up with its other lookups."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

from ledger.lots import epoch_ms
from ledger.monitors import Monitor, Spending, window_lengths
from ledger.plan import AccountKey
from storage.event_store import EventStore


class MonitorsLookup:
    """Shared by a process's batches. The monitors are read again every `reload_ms` (there
    are few, and they change rarely); what a batch's wallets spent in the watched windows is
    read for each batch, and only while some monitor watches spending."""

    def __init__(self, store: EventStore, reload_ms: int) -> None:
        self._store = store
        self._reload_s = reload_ms / 1000
        self.monitors: tuple[Monitor, ...] = ()
        self._loaded_at_s = float("-inf")

    async def of(self, keys: Iterable[AccountKey]) -> tuple[tuple[Monitor, ...], Spending]:
        """The monitors, and what the wallets among `keys` of an asset whose spending is
        watched spent in each watched window."""
        now_s = time.monotonic()
        if now_s - self._loaded_at_s > self._reload_s:
            self.monitors = await self._store.load_monitors()
            self._loaded_at_s = now_s
        lengths = window_lengths(self.monitors)
        if not lengths:
            return self.monitors, {}
        watched = {m.asset for m in self.monitors if m.window_s is not None}
        wanted = sorted({k for k in keys if k[1] in watched})
        now_ms = epoch_ms(datetime.now(UTC))
        return self.monitors, await self._store.load_spending(wanted, lengths, now_ms)
