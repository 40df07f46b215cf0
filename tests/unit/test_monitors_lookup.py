"""processor.monitors: what a partition knows of its wallets' spending in the watched
windows, and when it must read it again."""

from __future__ import annotations

from ledger.monitors import Monitor, Window
from processor.monitors import SpendingCache

HOURLY = (Monitor("spender", "spend_over_window", "GOLD", 100, 3600),)
RICH = (Monitor("rich", "balance_above", "GOLD", 100, None),)
ANN, BOB = ("ann", "GOLD"), ("bob", "GOLD")


class TestSpendingCache:
    def test_a_committed_window_is_not_read_again(self) -> None:
        """Once a batch committed a wallet's windows, the next batch takes them as known."""
        cache = SpendingCache(10)
        assert cache.wanted([ANN, BOB, ("ann", "GEMS")], HOURLY) == [ANN, BOB]
        cache.committed({ANN: {3600: Window(7, 40)}})
        assert cache.wanted([ANN, BOB], HOURLY) == [BOB]
        assert cache.of([ANN, BOB], {BOB: {3600: Window(7, 0)}}) == {
            ANN: {3600: Window(7, 40)}, BOB: {3600: Window(7, 0)}}  # fmt: skip

    def test_other_monitors_forget_what_was_known(self) -> None:
        """When the monitors change, spending that was not counted meanwhile may be missing:
        everything is read again."""
        cache = SpendingCache(10)
        cache.wanted([ANN], HOURLY)
        cache.committed({ANN: {3600: Window(7, 40)}})
        assert cache.wanted([ANN], RICH) == []  # nothing watches spending
        assert cache.wanted([ANN], HOURLY) == [ANN]

    def test_a_claim_forgets_and_the_cache_is_bounded(self) -> None:
        """clear() (every claim of the partition) forgets all; past its size the least
        recently used wallet goes."""
        cache = SpendingCache(1)
        cache.wanted([ANN, BOB], HOURLY)
        cache.committed({ANN: {3600: Window(7, 1)}})
        cache.committed({BOB: {3600: Window(7, 2)}})
        assert cache.wanted([ANN, BOB], HOURLY) == [ANN]
        cache.clear()
        assert cache.wanted([BOB], HOURLY) == [BOB]
