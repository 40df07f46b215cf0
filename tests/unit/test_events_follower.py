"""What the API's events follower does with each event, and when it vouches for the cache."""

from __future__ import annotations

import orjson

from foundation.settings import Settings
from projections.balance_cache import State
from projections.events_follower import EventsFollower


def _follower_with(user: str, accounts: dict[str, State]) -> EventsFollower:
    follower = EventsFollower(Settings(api_balance_cache_max=10))
    follower.cache.loaded(user, follower.cache.reading(user), accounts)
    return follower


def _event(
    asset: str, balance: object, version: object, paid: object = 0, held: object = 0
) -> bytes:
    document = {"asset": asset, "balance_after": balance, "version": version, "paid_after": paid,
                "held_after": held, "debt_after": 0}  # fmt: skip
    return orjson.dumps(document)


class TestEvents:
    def test_an_event_of_a_cached_user_moves_the_account(self) -> None:
        """A ledger event of a cached user, keyed by the user id, updates their balance and
        what holds keep aside."""
        follower = _follower_with("ana", {"GOLD": (5, 1, 0, 0, 0)})
        follower._apply(b"ana", _event("GOLD", 8, 2, held=3))
        assert follower.cache.balances("ana") == {"GOLD": (8, 0, 3, 0)}

    def test_an_unreadable_event_drops_the_user(self) -> None:
        """An event that is not a ledger event, or one without a paid part (republished from
        before lots), drops the user's cached balances (they are read from the ledger
        again), whatever was wrong with it."""
        unreadable = (b"not json", _event("GOLD", -1, 2), _event("GOLD", 8, True), b"[]",
                      _event("GOLD", 8, 2, None), _event("GOLD", 8, 2, 9),
                      _event("GOLD", 8, 2, held=-1))  # fmt: skip
        for value in unreadable:
            follower = _follower_with("ana", {"GOLD": (5, 1, 0, 0, 0)})
            follower._apply(b"ana", value)
            assert follower.cache.balances("ana") is None, value

    def test_events_of_other_users_are_not_decoded(self) -> None:
        """An event of a user not cached is skipped before decoding, even unreadable."""
        follower = _follower_with("ana", {"GOLD": (5, 1, 0, 0, 0)})
        follower._apply(b"bob", b"not json")
        follower._apply(None, b"not json")
        assert follower.cache.balances("ana") == {"GOLD": (5, 0, 0, 0)}


class TestTrust:
    async def test_a_follower_not_fetching_vouches_for_nothing(self) -> None:
        """Before it fetches (or once it stops), the follower answers None without a read:
        the route then reads the projection."""
        follower = _follower_with("ana", {"GOLD": (5, 1, 0, 0, 0)})
        assert not follower.trusted()
        assert await follower.balances(None, "ana") is None  # type: ignore[arg-type]
        assert len(follower.cache) == 0
