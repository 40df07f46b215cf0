"""Purchases killed at each crash point: the processor exits (as kill -9 would) before its
batch commits, after it commits and before its messages are published, or after they are
published and before the outbox's watermark is stored, on the first batch holding a purchase
of the named kind; a fresh processor takes over. Every purchase must be booked whole or
refused, once, each answered, and `wallet verify` clean. (The fault tests' load gives
conversions too: broker and PostgreSQL restarts under it are in test_broker.py and
test_postgres.py.)"""

from __future__ import annotations

import pytest

from foundation.settings import Settings
from processor.crash_points import POINTS
from schemas.commands import Command
from tests.faults.crashes import crashed_then_resumed
from tests.integration.helpers import audit, balance, command, fetch
from tests.integration.test_purchases import buy
from tests.integration.test_transfers import apart

pytestmark = pytest.mark.slow

ROUNDS = 4
CASES = [(point, kind) for kind in ("purchase", "conversion") for point in POINTS]


def purchases(users: list[str]) -> list[Command]:
    """For each user, rounds of an item purchase in GOLD and DIAMONDS, a conversion of
    DIAMONDS into GOLD, and a purchase it cannot pay (refused, nothing booked)."""
    return [b for i in range(ROUNDS) for u in users
            for b in (buy(u, ("GOLD", 10), ("DIAMONDS", 1), key=f"item-{i}"),
                      buy(u, ("DIAMONDS", 2), grants=(("GOLD", 100),), key=f"pack-{i}"),
                      buy(u, ("GOLD", 1), ("DIAMONDS", 10**6), key=f"poor-{i}"))]  # fmt: skip


class TestKilledAtEachPoint:
    @pytest.mark.parametrize(("point", "kind"), CASES)
    async def test_each_purchase_is_booked_once(
        self, stack: Settings, point: str, kind: str
    ) -> None:
        """The processor dies at the crash point; its successor answers every purchase:
        each whole or refused once, one reply each, the balances the model's, verify clean."""
        users = apart(stack, stack.partitions)
        sent = purchases(users)
        funds = [command("top_up", u, n, a) for u in users
                 for n, a in ((1000, "GOLD"), (50, "DIAMONDS"))]  # fmt: skip
        replies = await crashed_then_resumed(stack, f"{point}:{kind}", sent, funds)
        assert [r["status"] for r in replies] == ["accepted", "accepted", "rejected"] * (
            ROUNDS * len(users)
        )
        for user in users:
            assert await balance(stack, user) == 1000 + ROUNDS * (100 - 10)
            assert await balance(stack, user, "DIAMONDS") == 50 - ROUNDS * (1 + 2)
        rows = await fetch(stack, "SELECT purchase_id, count(*) AS n FROM processed_commands"
                           " WHERE purchase_id IS NOT NULL GROUP BY 1")  # fmt: skip
        assert sorted(r["n"] for r in rows) == [2] * (2 * ROUNDS * len(users))
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems
