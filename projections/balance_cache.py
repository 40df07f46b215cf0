"""A bounded cache of recently read users' balances, kept current by the ledger events: what
lets `GET /wallet/{userId}/balance` answer from memory instead of with a query per request.
Pure: the events consumer (projections.events_follower) and the HTTP edge drive it.

Why a cached balance is never older than the events consumer's position: a user enters the
cache from the ledger itself (a consistent read), and every ledger event after that moves one
account forward. An account's version grows by one per entry, so the higher version wins and
a repeated or replayed event changes nothing. An event consumed while a user's read is in
flight is held for that read and applied when it returns: the read may have taken its snapshot
before the event's transaction committed, and the event would otherwise be lost for as long as
the user stays cached.

Why the cache empties when the consumer stops hearing from the broker: nothing then moves the
cached accounts forward, so they would go stale without a sign. Reads go to PostgreSQL until
the consumer is fetching again.
"""

from __future__ import annotations

from collections import OrderedDict

from ledger.lots import Holding

State = tuple[int, int, int, int, int]  # (balance, version, paid, held, debt)
Accounts = dict[str, State]  # asset -> its state
HeldEvents = list[tuple[str, State]]  # (asset, state) consumed during a read


class BalanceCache:
    """Accounts of at most `users_max` users, the least recently read evicted first."""

    def __init__(self, users_max: int) -> None:
        assert users_max >= 1, users_max
        self._users_max = users_max
        self._users: OrderedDict[str, Accounts] = OrderedDict()
        self._reading: dict[str, list[HeldEvents]] = {}  # user -> one list per read in flight

    def __len__(self) -> int:
        return len(self._users)

    def balances(self, user_id: str) -> dict[str, Holding] | None:
        """The user's balance per asset (sorted by asset), or None when not cached."""
        accounts = self.accounts(user_id)
        return None if accounts is None else balances_of(accounts)

    def accounts(self, user_id: str) -> Accounts | None:
        """The user's account states (with their versions; the cache's own: read, never
        change), or None when not cached."""
        accounts = self._users.get(user_id)
        if accounts is not None:
            self._users.move_to_end(user_id)
        return accounts

    def wants(self, user_id: str) -> bool:
        """Whether an event of this user changes anything here (others are not decoded)."""
        return user_id in self._users or user_id in self._reading

    def reading(self, user_id: str) -> HeldEvents:
        """Note a read of the user from the ledger; give its list back to `loaded`."""
        held: HeldEvents = []
        self._reading.setdefault(user_id, []).append(held)
        return held

    def loaded(self, user_id: str, held: HeldEvents, accounts: Accounts | None) -> None:
        """The read's result (None: it failed), plus what was consumed while it ran."""
        reads = self._reading[user_id]
        reads.remove(held)
        if not reads:
            del self._reading[user_id]
        if accounts is None:
            return
        merged = dict(self._users.get(user_id, {}))
        for asset, state in accounts.items():
            _advance(merged, asset, state)
        for asset, state in held:
            _advance(merged, asset, state)
        self._users[user_id] = merged
        self._users.move_to_end(user_id)
        while len(self._users) > self._users_max:
            self._users.popitem(last=False)

    def apply(self, user_id: str, asset: str, state: State) -> None:
        """One ledger event: the account after it."""
        assert 0 <= state[2] <= state[0] and state[1] >= 1 and min(state[3:]) >= 0, state
        for held in self._reading.get(user_id, ()):
            held.append((asset, state))
        accounts = self._users.get(user_id)
        if accounts is not None:
            _advance(accounts, asset, state)

    def forget(self, user_id: str) -> None:
        """Drop one user (read from the ledger again on the next request)."""
        self._users.pop(user_id, None)

    def clear(self) -> None:
        """Forget every user (reads in flight still finish, into an empty cache)."""
        self._users.clear()


def balances_of(accounts: Accounts) -> dict[str, Holding]:
    """Each asset's holding, in asset order: what a balance read answers."""
    return {
        asset: Holding(balance, paid, held, debt)
        for asset, (balance, _, paid, held, debt) in sorted(accounts.items())
    }


def balance_document(user_id: str, found: dict[str, Holding]) -> dict[str, object]:
    """The body of a balance read: each asset's balance, held money included (the shape the
    REST wallets this replaces answered with), and beside it what of it is available (paid
    and free), held, and owed."""
    return {
        "userId": user_id,
        "balances": {asset: h.total for asset, h in found.items()},
        "breakdown": {asset: h.document() for asset, h in found.items()},
    }


def _advance(accounts: Accounts, asset: str, state: State) -> None:
    """Keep the later of two states of one account: the one with the higher version."""
    known = accounts.get(asset)
    if known is None or state[1] > known[1]:
        accounts[asset] = state
