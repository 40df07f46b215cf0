"""The write path end to end: real broker, real PostgreSQL, processor in this event loop."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from foundation.settings import Settings
from tests.integration.helpers import (
    asset_sums,
    balance,
    client_for,
    command,
    eventually,
    fetch,
    running_processor,
    send_all,
)
from tests.integration.processes import run_wallet

# The core flows also run on Tansu: the no-Java fallback must keep working.
pytestmark = pytest.mark.also_tansu


class TestFlows:
    async def test_top_up_bonus_spend_for_one_user(self, stack: Settings) -> None:
        """Credits and a debit give the right replies, balance and zero-sum entries; the
        spend takes the free bonus first (free_first), its paid rest is revenue."""
        async with running_processor(stack), client_for(stack) as client:
            top_up = await client.request(command("top_up", "alice", 100))
            bonus = await client.request(command("bonus", "alice", 25))
            spend = await client.request(command("spend", "alice", 40))
        assert [r.status for r in (top_up, bonus, spend)] == ["accepted"] * 3
        assert [r.balance for r in (top_up, bonus, spend)] == [100, 125, 85]
        assert spend.transaction_id is not None and not spend.duplicate
        assert spend.consumed is not None and (spend.consumed.paid, spend.consumed.free) == (15, 25)
        assert (spend.paid, spend.free) == (85, 0) and (bonus.paid, bonus.free) == (100, 25)
        assert await balance(stack, "alice") == 85
        assert await asset_sums(stack) == {"GOLD": 0}
        legs = await fetch(
            stack,
            "SELECT account_kind, amount FROM ledger_entries WHERE transaction_id = $1",
            spend.transaction_id,
        )
        assert sorted((r["account_kind"], r["amount"]) for r in legs) == [
            ("free_spent", 25),
            ("revenue", 15),
            ("user", -40),
        ]

    async def test_many_users_at_once(self, stack: Settings) -> None:
        """Commands for 200 users across partitions all land, each balance right."""
        users = [f"user-{i}" for i in range(200)]
        commands = [command("top_up", u, 10 + i) for i, u in enumerate(users)]
        commands += [command("spend", u, 5) for u in users]
        async with running_processor(stack), client_for(stack) as client:
            replies = await send_all(client, commands)
        assert all(r["status"] == "accepted" for r in replies)
        for i, user in enumerate(users[:20]):
            assert await balance(stack, user) == 10 + i - 5
        assert await asset_sums(stack) == {"GOLD": 0}

    async def test_unknown_asset_and_events_topic(self, stack: Settings) -> None:
        """An unknown asset is a recorded rejection; accepted commands reach wallet.events."""
        from messaging.kafka import make_consumer

        async with running_processor(stack), client_for(stack) as client:
            rejected = await client.request(command("top_up", "bob", 5, asset="RUBIES"))
            accepted = await client.request(command("top_up", "bob", 5))
        assert rejected.status == "rejected" and rejected.error is not None
        assert rejected.error.code == "unknown_asset"
        consumer = make_consumer(stack, stack.events_topic, auto_offset_reset="earliest")
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=5000)
        finally:
            await consumer.stop()
        events = [r for records in batch.values() for r in records]
        assert len(events) == 1 and events[0].key == b"bob"
        assert str(accepted.transaction_id).encode() in events[0].value


class TestOverdraftRace:
    async def test_thirty_spends_of_five_against_fifty(self, stack: Settings) -> None:
        """Exactly 10 of 30 concurrent spends succeed; the balance ends at 0, never below."""
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", "racer", 50))
            replies = await send_all(client, [command("spend", "racer", 5) for _ in range(30)])
        statuses = [r["status"] for r in replies]
        assert statuses.count("accepted") == 10
        codes = [r["error"]["code"] for r in replies if r["status"] == "rejected"]
        assert codes == ["insufficient_funds"] * 20
        assert await balance(stack, "racer") == 0
        negative = await fetch(stack, "SELECT 1 FROM ledger_entries WHERE balance_after < 0")
        assert negative == []


class TestIdempotency:
    async def test_fifty_copies_have_one_effect(self, stack: Settings) -> None:
        """50 copies of one command: one ledger effect, 50 replies, 49 duplicates, one id."""
        original = command("top_up", "carol", 70, key="order-1")
        copies = [original.model_copy(update={"command_id": uuid.uuid4()}) for _ in range(49)]
        async with running_processor(stack), client_for(stack) as client:
            replies = await send_all(client, [original, *copies])
        assert len(replies) == 50
        assert sum(r["duplicate"] for r in replies) == 49
        assert len({r["transaction_id"] for r in replies}) == 1
        assert {r["balance"] for r in replies} == {70}
        assert await balance(stack, "carol") == 70
        rows = await fetch(stack, "SELECT count(*) AS n FROM ledger_entries")
        assert rows[0]["n"] == 2

    async def test_retry_in_a_later_batch_gets_the_stored_result(self, stack: Settings) -> None:
        """A retry after the original committed is answered from the ledger, unchanged."""
        original = command("bonus", "frank", 15, key="daily-login")
        async with running_processor(stack), client_for(stack) as client:
            first = await client.request(original)
            retry = await client.request(original.model_copy(update={"command_id": uuid.uuid4()}))
        assert first.status == retry.status == "accepted"
        assert retry.duplicate and not first.duplicate
        assert retry.transaction_id == first.transaction_id and retry.balance == 15
        assert await balance(stack, "frank") == 15

    async def test_same_key_other_payload_is_refused(self, stack: Settings) -> None:
        """Reusing a key for a different amount is rejected and changes nothing."""
        async with running_processor(stack), client_for(stack) as client:
            first = await client.request(command("top_up", "dave", 10, key="k"))
            second = await client.request(command("top_up", "dave", 11, key="k"))
        assert first.status == "accepted"
        assert second.status == "rejected" and second.error is not None
        assert second.error.code == "idempotency_key_reused" and second.duplicate
        assert await balance(stack, "dave") == 10

    async def test_a_rejection_is_remembered(self, stack: Settings) -> None:
        """A retried rejected spend gets the same rejection even after funds arrive."""
        async with running_processor(stack), client_for(stack) as client:
            first = await client.request(command("spend", "erin", 10, key="buy-sword"))
            await client.request(command("top_up", "erin", 100))
            retry = await client.request(command("spend", "erin", 10, key="buy-sword"))
        assert first.error is not None and first.error.code == "insufficient_funds"
        assert retry.duplicate and retry.error is not None
        assert retry.error.code == "insufficient_funds"
        assert await balance(stack, "erin") == 100


class TestFailingBatch:
    async def test_a_failing_batch_is_retried_never_skipped(self, stack: Settings) -> None:
        """A batch the database refuses, as it refuses every command (a raise in a trigger),
        writes nothing and is retried until it goes through, in order, with nothing skipped
        or set aside (one record the database refuses alone is set aside instead: see
        test_narrowing.py)."""
        assert stack.database_url
        conn = await asyncpg.connect(stack.database_url)
        await conn.execute(
            "CREATE FUNCTION fail_cursed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'injected write failure'; END $$;"
            " CREATE TRIGGER fail_cursed BEFORE INSERT ON processed_commands FOR EACH ROW"
            " EXECUTE FUNCTION fail_cursed()"
        )
        try:
            async with running_processor(stack), client_for(stack) as client:
                first = await client.publish(command("top_up", "cursed", 5))
                second = await client.publish(command("top_up", "cursed", 7))
                await asyncio.sleep(2.0)
                assert not first.done() and not second.done()
                assert await balance(stack, "cursed") == 0
                await conn.execute("DROP TRIGGER fail_cursed ON processed_commands")
                replies = await asyncio.wait_for(asyncio.gather(first, second), 30)
        finally:
            await conn.close()
        assert [r["balance"] for r in replies] == [5, 12]
        assert await balance(stack, "cursed") == 12


class TestOutboxBound:
    async def test_relay_prunes_published_rows(self, stack: Settings) -> None:
        """With a small keep setting the outbox (where replies to repeated keys are stored)
        stays small while every reply still arrives."""
        small = stack.model_copy(update={"outbox_keep_rows": 5, "outbox_prune_interval_ms": 50})
        again = command("top_up", "pruned", 1)
        async with running_processor(small), client_for(small) as client:
            replies = [await client.request(again) for _ in range(40)]
        assert [r.duplicate for r in replies] == [False] + [True] * 39
        left = await fetch(stack, "SELECT count(*) AS n FROM outbox")
        assert left[0]["n"] < 20, left[0]["n"]


class TestStopping:
    async def test_stops_in_bounded_time_while_a_commit_is_blocked(self, stack: Settings) -> None:
        """A processor whose batch commit waits on a lock still stops soon after it is asked
        to, and the command it was committing is processed once by the next processor."""
        # The commit may wait two minutes on the database; the stop must not wait that long.
        slow = stack.model_copy(update={"db_timeout_ms": 120_000})
        assert stack.database_url
        locker = await asyncpg.connect(stack.database_url)
        try:
            async with client_for(stack) as client:
                async with running_processor(slow) as processor:
                    warm = await client.publish(command("top_up", "warm", 1))
                    await asyncio.wait_for(warm, 60)  # partitions claimed, a batch committed
                    tx = locker.transaction()
                    await tx.start()
                    await locker.execute("SELECT * FROM partition_state FOR UPDATE")
                    pending = await client.publish(command("top_up", "stuck", 9))
                    await asyncio.sleep(2.0)  # its commit now waits on the lock
                    started = asyncio.get_running_loop().time()
                    assert processor.owner
                # running_processor has set stop and waited for the processor to end
                stopped_s = asyncio.get_running_loop().time() - started
                await tx.rollback()
                assert stopped_s < 25.0  # kafka_timeout_ms (10 s) for the step, then exit
                async with running_processor(stack):
                    reply = await asyncio.wait_for(pending, 60)
        finally:
            await locker.close()
        assert reply["status"] == "accepted" and reply["balance"] == 9
        assert await balance(stack, "stuck") == 9


class TestExpiry:
    async def test_an_untouched_lot_is_booked_out_by_the_sweep(self, stack: Settings) -> None:
        """A bonus expiring in three seconds: spendable before, then the expiry sweep's
        `expire` books it out to `expired` once (the wallet untouched meanwhile), a later
        spend finds only the paid lot, and verify is clean."""
        settings = stack.model_copy(update={"expiry_sweep_interval_ms": 200})
        async with running_processor(settings), client_for(settings) as client:
            await client.request(command("top_up", "ivy", 5))  # the processor is running
            soon = datetime.now(UTC) + timedelta(seconds=3)
            bonus = await client.request(command("bonus", "ivy", 10, expires_at=soon))
            assert bonus.status == "accepted" and (bonus.paid, bonus.free) == (5, 10)

            async def booked() -> bool:
                rows = await fetch(settings, "SELECT 1 FROM processed_commands"
                                   " WHERE type = 'expire' AND status = 'accepted'")  # fmt: skip
                return bool(rows)

            await eventually(booked, 30, "the sweep booked the lot out")
            spend = await client.request(command("spend", "ivy", 6))
        expired = await fetch(settings, "SELECT amount, balance_after, processed_at"
                              " FROM processed_commands WHERE type = 'expire'"
                              " AND status = 'accepted'")  # fmt: skip
        assert [(r["amount"], r["balance_after"]) for r in expired] == [(10, 5)]
        assert expired[0]["processed_at"] >= soon
        assert spend.status == "rejected" and spend.balance == 5
        legs = await fetch(settings, "SELECT sum(amount) AS n FROM ledger_entries"
                           " WHERE account_kind = 'expired'")  # fmt: skip
        assert legs[0]["n"] == 10
        assert await asset_sums(settings) == {"GOLD": 0}
        audit = run_wallet(settings, "verify")
        assert audit.returncode == 0, audit.stdout + audit.stderr


class TestHoldsAndReversals:
    async def test_a_hold_captured_in_part_and_one_that_expires(self, stack: Settings) -> None:
        """A hold captured in part spends part and gives the rest back; a second hold expires
        untouched and the sweep gives it back; a capture after that is refused as expired;
        the ledger's holds account ends at zero and verify is clean."""
        settings = stack.model_copy(update={"expiry_sweep_interval_ms": 200})
        async with running_processor(settings), client_for(settings) as client:
            await client.request(command("top_up", "hal", 50))
            bid = await client.request(command("hold", "hal", 30, hold_id="bid", expires_in_s=60))
            assert (bid.balance, bid.held, bid.available) == (50, 30, 20)
            won = await client.request(command("capture", "hal", 12, hold_id="bid"))
            assert (won.amount, won.released, won.balance, won.held) == (12, 18, 38, 0)
            fee = await client.request(command("hold", "hal", 5, hold_id="fee", expires_in_s=1))
            assert fee.status == "accepted"

            async def given_back() -> bool:
                rows = await fetch(settings, "SELECT status FROM holds WHERE hold_id = 'fee'")
                return rows[0]["status"] == "expired"

            await eventually(given_back, 30, "the sweep gave the expired hold back")
            late = await client.request(command("capture", "hal", None, hold_id="fee"))
        assert late.error is not None and late.error.code == "hold_expired"
        assert await balance(settings, "hal") == 38
        held = await fetch(settings, "SELECT sum(amount) AS n FROM ledger_entries"
                           " WHERE account_kind = 'holds'")  # fmt: skip
        assert held[0]["n"] == 0 and await asset_sums(settings) == {"GOLD": 0}
        audit = run_wallet(settings, "verify")
        assert audit.returncode == 0, audit.stdout + audit.stderr

    async def test_a_refunded_top_up_leaves_debt_the_next_one_pays(self, stack: Settings) -> None:
        """Top-up 10, spend 7, the top-up reversed: 3 taken back and 7 owed; a spend is
        refused in debt; the next top-up of 20 pays the 7 first; verify is clean."""
        async with running_processor(stack), client_for(stack) as client:
            top_up = await client.request(command("top_up", "rex", 10))
            await client.request(command("spend", "rex", 7))
            assert top_up.transaction_id is not None
            undo = command("reverse", "rex", None, reason="store refund",
                           transaction_id=top_up.transaction_id)  # fmt: skip
            refund = await client.request(undo)
            refused = await client.request(command("spend", "rex", 1))
            again = await client.request(command("top_up", "rex", 20))
        assert (refund.status, refund.balance, refund.debt) == ("accepted", 0, 7)
        assert refused.error is not None and refused.error.code == "in_debt"
        assert (again.balance, again.debt) == (13, 0)
        receivable = await fetch(stack, "SELECT sum(amount) AS n FROM ledger_entries"
                                 " WHERE account_kind = 'receivable'")  # fmt: skip
        assert receivable[0]["n"] == 0 and await asset_sums(stack) == {"GOLD": 0}
        audit = run_wallet(stack, "verify")
        assert audit.returncode == 0, audit.stdout + audit.stderr
