"""Transfers end to end: real broker, real PostgreSQL, the processor in this event loop; the
steps travel between partitions through the outbox and the commands topic."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from foundation.settings import Settings
from messaging.kafka import partition_for
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


def apart(settings: Settings, count: int) -> list[str]:
    """`count` users, each on a partition of its own."""
    users: dict[int, str] = {}
    for i in range(10_000):
        user = f"player-{i}"
        users.setdefault(partition_for(user, settings.partitions), user)
        if len(users) == count:
            return list(users.values())
    raise AssertionError("not enough partitions")


class TestAcrossPartitions:
    async def test_a_gift_completes_and_its_sender_is_answered(self, stack: Settings) -> None:
        """A transfer between users on different partitions credits the receiver with the
        sender's lots (paid stays paid), and its one reply says completed."""
        ana, bob = apart(stack, 2)
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", ana, 100))
            await client.request(command("bonus", ana, 10))
            await client.request(command("top_up", bob, 1))
            reply = await client.request(command("transfer", ana, 30, to_user_id=bob))
        assert reply.status == "accepted" and reply.transfer is not None
        assert (reply.transfer.status, reply.transfer.to_user_id) == ("completed", bob)
        assert await balance(stack, ana) == 80 and await balance(stack, bob) == 31
        [lots] = await fetch(stack, "SELECT sum(remaining) FILTER (WHERE paid) AS paid "
                             "FROM lots WHERE user_id = $1", bob)  # fmt: skip
        assert lots["paid"] == 21  # the bonus's 10 went first (free first), then 20 paid
        assert await asset_sums(stack) == {"GOLD": 0}

    async def test_a_refused_gift_comes_back(self, stack: Settings) -> None:
        """A receiver without a wallet refuses; the sender's reply says refused, with the
        receiver's reason and the balance it is back to."""
        ana, nobody = apart(stack, 2)
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", ana, 100))
            reply = await client.request(command("transfer", ana, 30, to_user_id=nobody))
        assert reply.status == "rejected" and reply.error is not None
        assert reply.error.code == "unknown_wallet" and reply.balance == 100
        assert reply.transfer is not None and reply.transfer.status == "refused"
        assert await balance(stack, ana) == 100
        [moved] = await fetch(stack, "SELECT coalesce(sum(amount), 0) AS n FROM ledger_entries "
                              "WHERE account_kind = 'transfers'")  # fmt: skip
        assert moved["n"] == 0

    async def test_many_gifts_in_a_ring_conserve_every_credit(self, stack: Settings) -> None:
        """Gifts around a ring of users on all partitions, concurrently: each completes once
        and every wallet ends where the ring says."""
        users = apart(stack, min(stack.partitions, 8))
        ring = list(zip(users, users[1:] + users[:1], strict=True))
        gifts = [command("transfer", a, 7, to_user_id=b, key=f"gift-{i}-{a}")
                 for i in range(5) for a, b in ring]  # fmt: skip
        async with running_processor(stack), client_for(stack) as client:
            await send_all(client, [command("top_up", u, 50) for u in users])
            replies = await send_all(client, gifts)
            again = await send_all(client, gifts[:3])  # retries answer with the debit
        assert [r["transfer"]["status"] for r in replies] == ["completed"] * len(gifts)
        assert [r["duplicate"] for r in again] == [True] * 3
        for user in users:
            assert await balance(stack, user) == 50
        assert await asset_sums(stack) == {"GOLD": 0}
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems


class TestVerify:
    async def test_a_credit_moved_to_another_transfer_is_found(self, stack: Settings) -> None:
        """verify is clean after a gift, and names a credit that no longer belongs to its
        transfer: the transfer then looks in flight for an hour, the step names no debit and
        `transfers` no longer holds what is in flight."""
        ana, bob = apart(stack, 2)
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", ana, 100))
            await client.request(command("top_up", bob, 1))
            reply = await client.request(command("transfer", ana, 30, to_user_id=bob))
        assert reply.transfer is not None
        assert all(n == 0 for n in (await audit(stack)).values())
        assert stack.database_url
        conn = await asyncpg.connect(stack.database_url)
        try:  # bypassing the append-only triggers, as a bad script might
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("UPDATE processed_commands SET transfer_id = gen_random_uuid()"
                               " WHERE type = 'transfer_in'")  # fmt: skip
            await conn.execute("UPDATE processed_commands SET processed_at = now() - interval"
                               " '1 hour' WHERE type = 'transfer'")  # fmt: skip
        finally:
            await conn.close()
        problems = await audit(stack)
        assert problems["each transfer is in flight, completed or refused, each step once, and "
                        "`transfers` holds what is in flight"] == 2  # fmt: skip
        assert problems["no transfer stays in flight more than 300 s"] == 1
        status = await asyncio.to_thread(run_wallet, stack, "status", "--json")
        report = orjson.loads(status.stdout)
        assert report["transfers_in_flight"] == 1 and report["transfer_oldest_s"] > 3000
