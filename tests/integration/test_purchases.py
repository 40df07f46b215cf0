"""Purchases end to end: real broker, real PostgreSQL, the processor in this event loop; every
record of a purchase in one batch transaction, and `wallet verify` checking them."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from foundation.settings import Settings
from schemas.commands import Command, Part
from tests.integration.helpers import (
    asset_sums,
    audit,
    balance,
    client_for,
    command,
    fetch,
    running_processor,
    send_all,
)
from tests.integration.processes import run_wallet

pytestmark = pytest.mark.also_tansu
_WHOLE = "each purchase is whole: its records together, of its kind, its grants' paid share kept"
_LEGS = "every accepted command has one user entry and the system entries its record implies"


def buy(user: str, *costs: tuple[str, int], grants: tuple[tuple[str, int], ...] = (),
        key: str | None = None) -> Command:  # fmt: skip
    return command("purchase", user, None, asset=costs[0][0], key=key, sku="sword-of-dawn",
                   costs=[Part(asset=a, amount=n) for a, n in costs],
                   grants=[Part(asset=a, amount=n) for a, n in grants] or None)  # fmt: skip


async def _tamper(settings: Settings, sql: str) -> None:
    assert settings.database_url
    conn = await asyncpg.connect(settings.database_url)
    try:  # bypassing the append-only triggers, as a bad script might
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(sql)
    finally:
        await conn.close()


class TestPurchases:
    async def test_purchases_and_conversions_keep_the_ledger_whole(self, stack: Settings) -> None:
        """Purchases in two assets, conversions and refusals, concurrently for many users:
        every asset sums to zero, each user's balances are what the replies said, every
        `wallet verify` check holds, and `wallet status` counts them."""
        users = [f"buyer-{i}" for i in range(12)]
        credits = [command(kind, u, n, asset) for u in users
                   for kind, n, asset in (("top_up", 300, "GOLD"), ("top_up", 7, "DIAMONDS"),
                                          ("bonus", 3, "DIAMONDS"))]  # fmt: skip
        buys = [b for u in users for b in (buy(u, ("GOLD", 100), ("DIAMONDS", 4)),
                                           buy(u, ("DIAMONDS", 5), grants=(("GOLD", 1000),)),
                                           buy(u, ("GOLD", 50), ("DIAMONDS", 5)))]  # fmt: skip
        async with running_processor(stack), client_for(stack) as client:
            await send_all(client, credits)
            replies = await send_all(client, buys)
        assert [r["status"] for r in replies] == ["accepted", "accepted", "rejected"] * len(users)
        for user in users:
            assert await balance(stack, user) == 1200
            assert await balance(stack, user, "DIAMONDS") == 1
        [lots] = await fetch(stack, "SELECT sum(remaining) FILTER (WHERE paid) AS paid FROM lots "
                             "WHERE user_id = $1 AND asset = 'GOLD'", users[0])  # fmt: skip
        # The first purchase took the 3 free DIAMONDS (free first), so the conversion's 5 were
        # all paid for: its 1000 GOLD are paid currency, as the 200 left of the top-up.
        assert lots["paid"] == 1200
        assert await asset_sums(stack) == {"GOLD": 0, "DIAMONDS": 0}
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems
        status = await asyncio.to_thread(run_wallet, stack, "status", "--json")
        assert orjson.loads(status.stdout)["purchases"] == {
            "accepted": 2 * len(users),
            "refused": len(users),
            "conversions": len(users),
        }

    async def test_verify_names_a_broken_purchase(self, stack: Settings) -> None:
        """verify names a grant whose lot claims more paid currency than its cost paid for,
        and an `exchange` leg that does not match its record."""
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("bonus", "vic", 10, "DIAMONDS"))
            reply = await client.request(buy("vic", ("DIAMONDS", 10), grants=(("GOLD", 100),)))
        assert reply.status == "accepted"
        await _tamper(stack, "UPDATE processed_commands SET consumed_paid = amount"
                             " WHERE type = 'purchase_grant'")  # fmt: skip
        await _tamper(stack, "UPDATE ledger_entries SET amount = amount - 1"
                             " WHERE account_kind = 'exchange' AND asset = 'DIAMONDS'")  # fmt: skip
        problems = await audit(stack)
        assert problems[_WHOLE] == 1 and problems[_LEGS] == 1
