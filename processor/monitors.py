"""The monitors watching a batch (ledger.monitors), looked up with its other lookups."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from ledger.lots import epoch_ms
from ledger.monitors import Monitor, Spending, Window, window_lengths
from ledger.plan import AccountKey
from storage.event_store import EventStore


class MonitorsLookup:
    """Shared by a process's batches. The monitors are read again every `reload_ms` (there
    are few, and they change rarely); what wallets spent in the watched windows is read only
    for those a partition's SpendingCache does not know."""

    def __init__(self, store: EventStore, reload_ms: int) -> None:
        self._store = store
        self._reload_s = reload_ms / 1000
        self.monitors: tuple[Monitor, ...] = ()
        self._loaded_at_s = float("-inf")

    async def current(self) -> tuple[Monitor, ...]:
        """The monitors, read again when older than `reload_ms`."""
        now_s = time.monotonic()
        if now_s - self._loaded_at_s > self._reload_s:
            self.monitors = await self._store.load_monitors()
            self._loaded_at_s = now_s
        return self.monitors

    async def spending(
        self, wanted: Iterable[AccountKey], monitors: tuple[Monitor, ...]
    ) -> Spending:
        """What the wallets `wanted` spent in each window the monitors watch."""
        keys = sorted(set(wanted))
        lengths = window_lengths(monitors)
        if not keys or not lengths:
            return {}
        return await self._store.load_spending(keys, lengths, epoch_ms(datetime.now(UTC)))


class SpendingCache:
    """What a partition's wallets spent in the watched windows, as its committed batches left
    it. Why it can be trusted: the partition's single writer decides every spend of its
    wallets, and counts each one of a watched asset as it decides it (ledger.monitors), so a
    window known once stays known (a later window starts at 0) for as long as the same
    monitors watch. Cleared when the monitors change (a window unwatched for a while was not
    counted), on every claim of the partition, and bounded (least recently used first)."""

    def __init__(self, size_max: int) -> None:
        assert size_max > 0
        self._size_max = size_max
        self._known: OrderedDict[AccountKey, dict[int, Window]] = OrderedDict()
        self._under: tuple[Monitor, ...] = ()

    def clear(self) -> None:
        self._known.clear()

    def wanted(self, keys: Iterable[AccountKey], monitors: tuple[Monitor, ...]) -> list[AccountKey]:
        """The wallets among `keys` whose spending in the monitors' windows must be read."""
        if monitors != self._under:
            self._known.clear()
            self._under = monitors
        lengths = window_lengths(monitors)
        watched = {m.asset for m in monitors if m.window_s is not None}
        return [k for k in keys if k[1] in watched
                and not all(n in self._known.get(k, {}) for n in lengths)]  # fmt: skip

    def of(
        self, keys: Iterable[AccountKey], looked_up: Spending
    ) -> dict[AccountKey, Mapping[int, Window]]:
        """The spending of `keys`: as read, else as known."""
        found: dict[AccountKey, Mapping[int, Window]] = {}
        for key in keys:
            if key in looked_up:
                found[key] = looked_up[key]
            elif key in self._known:
                found[key] = self._known[key]
        return found

    def committed(self, spending: Mapping[AccountKey, Mapping[int, Window]]) -> None:
        """A committed batch's spending, as it left it."""
        for key, windows in spending.items():
            self._known[key] = dict(windows)
            self._known.move_to_end(key)
        while len(self._known) > self._size_max:
            self._known.popitem(last=False)
