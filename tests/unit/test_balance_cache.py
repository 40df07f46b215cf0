"""The API's balance cache: filled from the ledger, moved forward by ledger events only."""

from __future__ import annotations

from projections.balance_cache import BalanceCache, State


def _cached(cache: BalanceCache, user: str, accounts: dict[str, State]) -> None:
    cache.loaded(user, cache.reading(user), accounts)


class TestReads:
    def test_a_user_read_from_the_ledger_is_answered_sorted_by_asset(self) -> None:
        """A loaded user's balances come back per asset, in asset order; others are None."""
        cache = BalanceCache(10)
        _cached(cache, "ana", {"GOLD": (5, 1, 0, 0, 0), "DIAMONDS": (2, 3, 0, 0, 0)})
        assert cache.balances("ana") == {"DIAMONDS": (2, 0, 0, 0), "GOLD": (5, 0, 0, 0)}
        assert list(cache.balances("ana") or {}) == ["DIAMONDS", "GOLD"]
        assert cache.balances("bob") is None

    def test_a_failed_read_caches_nothing(self) -> None:
        """A read that failed (None) leaves the user out, and nothing waits for it."""
        cache = BalanceCache(10)
        cache.loaded("ana", cache.reading("ana"), None)
        assert cache.balances("ana") is None and not cache.wants("ana")


class TestEvents:
    def test_a_later_version_moves_an_account_and_an_earlier_one_does_not(self) -> None:
        """Events apply by version: a repeat or a replayed old event changes nothing."""
        cache = BalanceCache(10)
        _cached(cache, "ana", {"GOLD": (5, 2, 0, 0, 0)})
        cache.apply("ana", "GOLD", (9, 3, 0, 0, 0))
        cache.apply("ana", "GOLD", (5, 2, 0, 0, 0))
        cache.apply("ana", "GOLD", (1, 1, 0, 0, 0))
        assert cache.balances("ana") == {"GOLD": (9, 0, 0, 0)}

    def test_a_new_asset_of_a_cached_user_is_added(self) -> None:
        """A cached user's first entry in another asset appears in their balances."""
        cache = BalanceCache(10)
        _cached(cache, "ana", {"GOLD": (5, 1, 0, 0, 0)})
        cache.apply("ana", "DIAMONDS", (4, 1, 0, 0, 0))
        assert cache.balances("ana") == {"DIAMONDS": (4, 0, 0, 0), "GOLD": (5, 0, 0, 0)}

    def test_events_of_users_not_cached_are_not_wanted(self) -> None:
        """Only cached users, and users being read, need their events decoded."""
        cache = BalanceCache(10)
        _cached(cache, "ana", {"GOLD": (5, 1, 0, 0, 0)})
        cache.reading("bob")
        assert cache.wants("ana") and cache.wants("bob") and not cache.wants("cy")
        cache.apply("cy", "GOLD", (3, 1, 0, 0, 0))
        assert cache.balances("cy") is None

    def test_an_event_during_a_read_is_applied_when_it_returns(self) -> None:
        """An event consumed while the user's read ran is not lost when the read's snapshot
        came before that event's commit."""
        cache = BalanceCache(10)
        held = cache.reading("ana")
        cache.apply("ana", "GOLD", (12, 2, 0, 0, 0))  # committed after the read's snapshot
        cache.loaded("ana", held, {"GOLD": (5, 1, 0, 0, 0)})
        assert cache.balances("ana") == {"GOLD": (12, 0, 0, 0)}
        assert not cache.wants("bob")

    def test_two_reads_of_one_user_each_get_the_events(self) -> None:
        """Concurrent reads of one user each hold what was consumed during them."""
        cache = BalanceCache(10)
        first, second = cache.reading("ana"), cache.reading("ana")
        cache.apply("ana", "GOLD", (7, 2, 0, 0, 0))
        cache.loaded("ana", first, {"GOLD": (5, 1, 0, 0, 0)})
        cache.apply("ana", "GOLD", (9, 3, 0, 0, 0))
        cache.loaded("ana", second, {"GOLD": (5, 1, 0, 0, 0)})
        assert cache.balances("ana") == {"GOLD": (9, 0, 0, 0)}

    def test_the_paid_part_moves_with_the_balance(self) -> None:
        """An event carries the paid part of the balance after it, what holds keep aside and
        the debt; the read shows them all, the total counting held money."""
        cache = BalanceCache(10)
        _cached(cache, "ana", {"GOLD": (5, 1, 5, 0, 0)})
        cache.apply("ana", "GOLD", (9, 2, 5, 3, 1))
        found = cache.balances("ana")
        assert found is not None and found["GOLD"].total == 12
        assert found["GOLD"].document() == {
            "paid": 5, "free": 4, "held": 3, "available": 9, "debt": 1
        }  # fmt: skip


class TestBounds:
    def test_the_least_recently_read_user_goes_first(self) -> None:
        """Past users_max, the user read longest ago is evicted."""
        cache = BalanceCache(2)
        _cached(cache, "ana", {"GOLD": (1, 1, 0, 0, 0)})
        _cached(cache, "bob", {"GOLD": (2, 1, 0, 0, 0)})
        cache.balances("ana")
        _cached(cache, "cy", {"GOLD": (3, 1, 0, 0, 0)})
        assert len(cache) == 2
        assert cache.balances("bob") is None and cache.balances("ana") == {"GOLD": (1, 0, 0, 0)}

    def test_forget_and_clear_drop_users(self) -> None:
        """A forgotten user, and after a clear every user, is read from the ledger again."""
        cache = BalanceCache(10)
        _cached(cache, "ana", {"GOLD": (1, 1, 0, 0, 0)})
        _cached(cache, "bob", {"GOLD": (2, 1, 0, 0, 0)})
        cache.forget("ana")
        assert cache.balances("ana") is None and cache.balances("bob") == {"GOLD": (2, 0, 0, 0)}
        cache.clear()
        assert len(cache) == 0
