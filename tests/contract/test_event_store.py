"""The event store's contract: every implementation (PostgreSQL, memory) keeps the same rules.
Each test runs against both; the PostgreSQL one on a database of its own."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foundation.errors import FencedError, StorageRefusedError
from foundation.settings import Settings
from ledger.account import Step
from ledger.caps import DAY_MS, Caps
from ledger.monitors import Monitor, Window
from ledger.plan import BatchPlan
from schemas.codec import decode_command
from schemas.commands import Command, Part
from storage.db import create_pool
from storage.event_store import (
    BatchPosition,
    EventStore,
    OutboxMessage,
    PostgresEventStore,
    PublishedMark,
    StaleOffsetError,
)
from storage.limits import set_limits
from storage.memory_event_store import MemoryEventStore
from storage.monitors import set_monitor
from tests.contract.batches import planned_batch, planned_commands
from tests.integration.helpers import command

TOPIC, PARTITION = "contract.commands", 0


@pytest.fixture
async def store(database: Settings | None) -> AsyncIterator[EventStore]:
    if database is None:
        yield MemoryEventStore()
        return
    pool = await create_pool(database)
    try:
        yield PostgresEventStore(pool, 10.0)
    finally:
        await pool.close()


async def _batch(
    store: EventStore, epoch: int, first: int, amounts: list[int], key: str = "k"
) -> tuple[BatchPosition, BatchPlan]:
    return await planned_batch(store, TOPIC, PARTITION, epoch, first, amounts, key)


async def _commands(
    store: EventStore, epoch: int, first: int, commands: list[Command]
) -> tuple[BatchPosition, BatchPlan]:
    return await planned_commands(store, TOPIC, PARTITION, epoch, first, commands)


class TestClaims:
    async def test_each_claim_fences_the_one_before(self, store: EventStore) -> None:
        """A commit under an older epoch is refused as fenced and changes nothing."""
        old = await store.claim_partition(TOPIC, PARTITION, "a")
        new = await store.claim_partition(TOPIC, PARTITION, "b")
        assert new.epoch == old.epoch + 1
        with pytest.raises(FencedError) as refused:
            await store.commit_batch(*await _batch(store, old.epoch, 0, [5]))
        assert not isinstance(refused.value, StaleOffsetError)
        assert (await store.claim_partition(TOPIC, PARTITION, "c")).next_offset == 0


class TestCommits:
    async def test_a_commit_moves_the_offset_and_the_balance(self, store: EventStore) -> None:
        """The next claim starts after the batch's last record, and sees its balance and its
        idempotency records."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        position, plan = await _batch(store, claim.epoch, 0, [5, 7])
        await store.commit_batch(position, plan)
        again = await store.claim_partition(TOPIC, PARTITION, "b")
        assert (again.next_offset, again.last_offset, again.last_fingerprint) == (2, 1, b"fp")
        accounts = await store.load_accounts([("ana", "GOLD")])
        assert (accounts[("ana", "GOLD")].balance, accounts[("ana", "GOLD")].version) == (12, 2)
        found = await store.find_processed([("ana", "k-0"), ("ana", "nope")])
        assert list(found) == [("ana", "k-0")] and found[("ana", "k-0")].balance_after == 5

    async def test_a_batch_not_starting_at_the_stored_offset_is_stale(
        self, store: EventStore
    ) -> None:
        """A batch that does not begin where the last commit ended is refused."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        with pytest.raises(StaleOffsetError):
            await store.commit_batch(*await _batch(store, claim.epoch, 3, [5]))

    async def test_a_repeated_idempotency_record_is_refused_whole(self, store: EventStore) -> None:
        """A second record for one (user, key) is refused as a record's fault, and nothing of
        its batch is written."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        await store.commit_batch(*await _batch(store, claim.epoch, 0, [5]))
        position, plan = await _batch(store, claim.epoch, 1, [7], key="k")
        plan.processed_rows[0] = plan.processed_rows[0]._replace(idempotency_key="k-0")
        with pytest.raises(StorageRefusedError) as refused:
            await store.commit_batch(position, plan)
        assert refused.value.data["records_fault"] is True
        assert (await store.claim_partition(TOPIC, PARTITION, "b")).next_offset == 1

    async def test_a_probe_changes_nothing(self, store: EventStore) -> None:
        """A probed batch raises what its commit would raise, and writes nothing."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        await store.probe_batches([await _batch(store, claim.epoch, 0, [5])])
        assert await store.load_accounts([("ana", "GOLD")]) == {}
        with pytest.raises(StaleOffsetError):
            await store.probe_batches([await _batch(store, claim.epoch, 4, [5])])


class TestLots:
    async def test_a_loaded_account_holds_the_lots_its_batches_left(
        self, store: EventStore
    ) -> None:
        """Lots opened by top-ups and drawn on by spends come back with the account; a lot
        used up is gone; they sum to the balance."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        position, plan = await _batch(store, claim.epoch, 0, [5, 7, -6])
        await store.commit_batch(position, plan)
        account = (await store.load_accounts([("ana", "GOLD")]))[("ana", "GOLD")]
        (lot,) = account.lots
        assert (lot.lot_id, lot.paid, lot.remaining) == (plan.processed_rows[1].transaction_id,
                                                         True, 6)  # fmt: skip
        assert (account.balance, account.paid, account.version) == (6, 6, 3)
        await store.commit_batch(*await _batch(store, claim.epoch, 3, [-6, 2]))
        account = (await store.load_accounts([("ana", "GOLD")]))[("ana", "GOLD")]
        assert [(lot.remaining, lot.seq) for lot in account.lots] == [(2, 5)]

    async def test_a_loaded_account_holds_its_open_holds(self, store: EventStore) -> None:
        """A hold comes back with its account (its pieces, what it keeps, when it expires),
        outside the balance; once captured it is gone from the account."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        hold = command("hold", "ana", 4, key="h-1", hold_id="bid", expires_in_s=60)
        first = [command("top_up", "ana", 10, key="t-1"), hold]
        await store.commit_batch(*await _commands(store, claim.epoch, 0, first))
        account = (await store.load_accounts([("ana", "GOLD")]))[("ana", "GOLD")]
        (held,) = account.holds
        assert (held.hold_id, held.amount, sum(p.amount for p in held.pieces)) == ("bid", 4, 4)
        assert (account.balance, account.held) == (6, 4)
        capture = command("capture", "ana", 3, key="c-1", hold_id="bid")
        await store.commit_batch(*await _commands(store, claim.epoch, 2, [capture]))
        account = (await store.load_accounts([("ana", "GOLD")]))[("ana", "GOLD")]
        assert (account.balance, account.held, account.holds) == (7, 0, ())

    async def test_references_say_how_holds_went_and_what_a_reverse_undoes(
        self, store: EventStore
    ) -> None:
        """A resolved hold's status, and a spend with the lots it took (their origin from
        the credit that opened them) and whether it was reversed."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        batch = [command("top_up", "ana", 10, key="t-1"), command("spend", "ana", 4, key="s-1"),
                 command("hold", "ana", 1, key="h-1", hold_id="h", expires_in_s=60),
                 command("release", "ana", None, key="r-1", hold_id="h")]  # fmt: skip
        position, plan = await _commands(store, claim.epoch, 0, batch)
        await store.commit_batch(position, plan)
        top_up, spend = (row.transaction_id for row in plan.processed_rows[:2])
        assert spend is not None
        refs = await store.find_references([("ana", "GOLD", "h"), ("ana", "GOLD", "x")], [spend])
        assert refs.holds == {("ana", "GOLD", "h"): "released"}
        target = refs.targets[spend]
        assert (target.type, target.amount, target.reversed) == ("spend", 4, False)
        assert [(p.lot_id, p.paid, p.amount, p.seq) for p in target.pieces] == [
            (top_up, True, 4, 1)
        ]
        assert top_up is not None
        credit = (await store.find_references([], [top_up])).targets[top_up]
        assert (credit.expired, type(credit.expired), credit.before_lots) == (0, int, False)
        undo = command("reverse", "ana", None, key="u-1", transaction_id=spend, reason="test")
        await store.commit_batch(*await _commands(store, claim.epoch, 4, [undo]))
        assert (await store.find_references([], [spend])).targets[spend].reversed

    async def test_resolving_a_resolved_hold_fails_the_whole_commit(
        self, store: EventStore
    ) -> None:
        """A batch that would resolve a hold the table holds resolved (the planner never
        writes one) fails loudly, and writes nothing."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        batch = [command("top_up", "ana", 10, key="t-1"),
                 command("hold", "ana", 1, key="h-1", hold_id="h", expires_in_s=60),
                 command("release", "ana", None, key="r-1", hold_id="h")]  # fmt: skip
        position, released = await _commands(store, claim.epoch, 0, batch)
        await store.commit_batch(position, released)
        position, plan = await _commands(store, claim.epoch, 3, [command("top_up", "ana", 1)])
        plan.holds.update(released.holds)
        with pytest.raises(AssertionError):
            await store.commit_batch(position, plan)
        account = (await store.load_accounts([("ana", "GOLD")]))[("ana", "GOLD")]
        assert (account.balance, account.version) == (10, 3)

    async def test_a_spend_records_what_it_took(self, store: EventStore) -> None:
        """A spend's record keeps its paid part, returned to a retry with its key."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        await store.commit_batch(*await _batch(store, claim.epoch, 0, [5, -3]))
        found = await store.find_processed([("ana", "k-1")])
        assert (found[("ana", "k-1")].consumed_paid, found[("ana", "k-1")].paid_after) == (3, 2)


class TestOutbox:
    async def test_what_is_republished_is_what_was_planned(self, store: EventStore) -> None:
        """After a crash the relay gets the very messages the planner made: replies and events
        rebuilt from idempotency records, and the stored reply to a repeated key."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        first = await _batch(store, claim.epoch, 0, [5, -100, 7])  # the spend is refused
        await store.commit_batch(*first)
        second = await planned_batch(store, TOPIC, PARTITION, claim.epoch, 3, [5, 2],
                                     keys=["k-0", "k-new"])  # fmt: skip
        await store.commit_batch(*second)
        planned = [OutboxMessage.of(r) for _, p in (first, second) for r in p.outbox_rows]
        assert [m.event_value is not None for m in planned] == [True, False, True, False, True]
        assert await store.unpublished(TOPIC, PARTITION, (0, 0), 10) == planned
        assert await store.unpublished(TOPIC, PARTITION, (0, 2), 2) == planned[2:4]

    async def test_unpublished_until_the_owner_marks_it(self, store: EventStore) -> None:
        """A batch's outbox rows stay unpublished until the owner marks them; a fenced owner's
        mark changes nothing; the claim reports the watermark."""
        old = await store.claim_partition(TOPIC, PARTITION, "a")
        await store.commit_batch(*await _batch(store, old.epoch, 0, [1, 2, 3]))
        assert [m.source_offset for m in await store.unpublished(TOPIC, PARTITION, (0, 0), 10)] == [
            0, 1, 2
        ]  # fmt: skip
        new = await store.claim_partition(TOPIC, PARTITION, "b")
        await store.mark_published([PublishedMark(TOPIC, PARTITION, old.epoch, 0, 3)])
        assert (await store.claim_partition(TOPIC, PARTITION, "c")).published_offset == 0
        latest = new.epoch + 1
        await store.mark_published([PublishedMark(TOPIC, PARTITION, latest, 0, 2)])
        claim = await store.claim_partition(TOPIC, PARTITION, "d")
        assert (claim.published_generation, claim.published_offset) == (0, 2)
        left = await store.unpublished(TOPIC, PARTITION, (0, 2), 10)
        assert [m.source_offset for m in left] == [2]


async def _steps(store: EventStore, first: int) -> list[Command]:
    """The transfer steps the records from offset `first` on send to the commands topic."""
    sent = await store.unpublished(TOPIC, PARTITION, (0, first), 100)
    steps = [decode_command(m.reply_value, bytes_max=10_000) for m in sent
             if m.reply_topic == TOPIC]  # fmt: skip
    assert all(isinstance(s, Command) for s in steps), steps
    return [s for s in steps if isinstance(s, Command)]


class TestTransfers:
    async def test_a_step_finds_its_transfer_steps_and_receiver(self, store: EventStore) -> None:
        """References name a transfer with its receiver and pieces, the steps recorded of it,
        and which receivers have a wallet."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        batch = [command("top_up", "ana", 10, key="t-1"), command("bonus", "bob", 1, key="b-1"),
                 command("transfer", "ana", 4, key="g-1", to_user_id="bob")]  # fmt: skip
        position, plan = await _commands(store, claim.epoch, 0, batch)
        await store.commit_batch(position, plan)
        top_up, transfer = plan.processed_rows[0].transaction_id, plan.processed_rows[2].transfer_id
        assert transfer is not None and top_up is not None
        refs = await store.find_references([], [transfer], ["bob", "zed"])
        found = refs.targets[transfer]
        assert (found.type, found.amount, found.counterparty) == ("transfer", 4, "bob")
        assert [(p.lot_id, p.paid, p.amount) for p in found.pieces] == [(top_up, True, 4)]
        assert (refs.transfers, refs.wallets) == ({}, frozenset({"bob"}))
        [step] = await _steps(store, 0)
        assert (step.type, step.user_id, step.transaction_id) == ("transfer_in", "bob", transfer)
        await store.commit_batch(*await _commands(store, claim.epoch, 3, [step]))
        refs = await store.find_references([], [transfer], [])
        assert refs.transfers == {transfer: {"transfer_in": Step("accepted", None, None)}}
        bob = (await store.load_accounts([("bob", "GOLD")]))[("bob", "GOLD")]
        assert (bob.balance, bob.paid) == (5, 4)

    async def test_a_refused_transfer_comes_back_once(self, store: EventStore) -> None:
        """A receiver without a wallet refuses; the refund gives the pieces back to the
        sender's lot, and a second refund of the same transfer is a duplicate."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        batch = [command("top_up", "ana", 10, key="t-1"),
                 command("transfer", "ana", 4, key="g-1", to_user_id="zed")]  # fmt: skip
        await store.commit_batch(*await _commands(store, claim.epoch, 0, batch))
        [credit] = await _steps(store, 0)
        await store.commit_batch(*await _commands(store, claim.epoch, 2, [credit]))
        [refund] = await _steps(store, 2)
        assert (refund.type, refund.user_id) == ("transfer_refund", "ana")
        position, plan = await _commands(store, claim.epoch, 3, [refund, refund])
        await store.commit_batch(position, plan)
        assert [d.outcome for d in plan.decided] == ["accepted", "duplicate"]
        assert plan.processed_rows[0].reason == "unknown_wallet: zed has no wallet"
        ana = (await store.load_accounts([("ana", "GOLD")]))[("ana", "GOLD")]
        assert (ana.balance, ana.paid, len(ana.lots)) == (10, 10, 1)

    async def test_stuck_transfers_are_those_whose_next_step_is_missing(
        self, store: EventStore
    ) -> None:
        """A debit no step followed, and a refusal no refund followed, are stuck (once older
        than asked); a taken step ends it."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        batch = [command("top_up", "ana", 10, key="t-1"),
                 command("transfer", "ana", 4, key="g-1", to_user_id="zed")]  # fmt: skip
        position, plan = await _commands(store, claim.epoch, 0, batch)
        await store.commit_batch(position, plan)
        [debit] = await store.stuck_transfers(TOPIC, [PARTITION], 0, 10)
        sent = plan.processed_rows[1]
        assert (debit.transfer_id, debit.type, debit.amount) == (sent.transfer_id, "transfer", 4)
        assert await store.stuck_transfers(TOPIC, [PARTITION], 3_600_000, 10) == []
        assert await store.stuck_transfers(TOPIC, [PARTITION + 1], 0, 10) == []
        [credit] = await _steps(store, 0)
        await store.commit_batch(*await _commands(store, claim.epoch, 2, [credit]))
        [refusal] = await store.stuck_transfers(TOPIC, [PARTITION], 0, 10)
        assert (refusal.type, refusal.status) == ("transfer_in", "rejected")
        [refund] = await _steps(store, 2)
        await store.commit_batch(*await _commands(store, claim.epoch, 3, [refund]))
        assert await store.stuck_transfers(TOPIC, [PARTITION], 0, 10) == []


class TestCaps:
    async def test_a_capped_wallet_comes_with_what_it_used_today(
        self, store: EventStore, database: Settings | None
    ) -> None:
        """Only capped wallets are found, each with today's spends, captures and transfers
        out (accepted ones); a store with no cap says so."""
        assert not await store.any_caps()
        await _cap(store, database, ("ana", "GOLD"), (30, 5))
        assert await store.any_caps()
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        batch = [command("top_up", "ana", 100), command("spend", "ana", 7),
                 command("hold", "ana", 4, hold_id="h", expires_in_s=60),
                 command("capture", "ana", None, hold_id="h"),
                 command("transfer", "ana", 2, to_user_id="bob"),
                 command("spend", "ana", 1000), command("spend", "bob", 1)]  # fmt: skip
        await store.commit_batch(*await _commands(store, claim.epoch, 0, batch))
        today = int(time.time() * 1000) // DAY_MS
        found = await store.load_caps([("ana", "GOLD"), ("bob", "GOLD")], today)
        assert found == {("ana", "GOLD"): Caps(30, 5, today, spent=11, sent=2)}
        assert (await store.load_caps([("ana", "GOLD")], today + 1))[("ana", "GOLD")].spent == 0


async def _cap(
    store: EventStore, database: Settings | None, key: tuple[str, str], caps: tuple[int, int]
) -> None:
    """Cap a wallet as `wallet limits set` would."""
    if isinstance(store, MemoryEventStore):
        store.limits[key] = caps
        return
    assert database is not None and database.database_url
    conn = await asyncpg.connect(database.database_url)
    try:
        await set_limits(conn, *key, caps, "contract")
    finally:
        await conn.close()


class TestPurchases:
    async def test_a_purchase_is_several_records_at_one_offset(self, store: EventStore) -> None:
        """A purchase's records commit together at its offset, and the relay's pages never
        end inside an offset: a page that would, ends before it (or takes it whole when it
        is the page's first)."""
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        conversion = command("purchase", "ana", None, costs=[Part(asset="GOLD", amount=10)],
                             grants=[Part(asset="DIAMONDS", amount=3)], sku="pack")  # fmt: skip
        batch = [command("top_up", "ana", 100), command("bonus", "ana", 100), conversion,
                 command("spend", "ana", 1)]  # fmt: skip
        position, plan = await _commands(store, claim.epoch, 0, batch)
        await store.commit_batch(position, plan)
        assert [(r.type, r.source_offset) for r in plan.processed_rows][2:] == [
            ("conversion", 2), ("purchase_grant", 2), ("spend", 3)]  # fmt: skip
        planned = [OutboxMessage.of(r) for r in plan.outbox_rows]
        assert await store.unpublished(TOPIC, PARTITION, (0, 0), 10) == planned
        offsets = [[m.source_offset for m in await store.unpublished(TOPIC, PARTITION, (0, 0), n)]
                   for n in (3, 4)]  # fmt: skip
        assert offsets == [[0, 1], [0, 1, 2, 2]]
        assert await store.unpublished(TOPIC, PARTITION, (0, 2), 1) == planned[2:4]
        accounts = await store.load_accounts([("ana", "DIAMONDS")])
        assert accounts[("ana", "DIAMONDS")].balance == 3


class TestMonitors:
    async def test_spending_is_read_per_window(
        self, store: EventStore, database: Settings | None
    ) -> None:
        """The monitors come back as set; a wallet's spending (spends, captures, purchases'
        costs) is read in the window of each length holding the time asked about."""
        await _monitor(store, database, Monitor("spender", "spend_over_window", "GOLD", 50, 60))
        assert await store.load_monitors() == (
            Monitor("spender", "spend_over_window", "GOLD", 50, 60),)  # fmt: skip
        claim = await store.claim_partition(TOPIC, PARTITION, "a")
        item = command("purchase", "ana", None, costs=[Part(asset="GOLD", amount=5)], sku="s")
        batch = [command("top_up", "ana", 100), command("spend", "ana", 7), item]
        await store.commit_batch(*await _commands(store, claim.epoch, 0, batch))
        now_ms = int(time.time() * 1000)
        found = await store.load_spending([("ana", "GOLD"), ("bob", "GOLD")], [60, 86_400],
                                          now_ms)  # fmt: skip
        assert found[("ana", "GOLD")][86_400] == Window(now_ms // 86_400_000, 12)
        assert found[("bob", "GOLD")][86_400].spent == 0
        later = await store.load_spending([("ana", "GOLD")], [60], now_ms + 120_000)
        assert later[("ana", "GOLD")][60].spent == 0


async def _monitor(store: EventStore, database: Settings | None, monitor: Monitor) -> None:
    """Add a monitor as `wallet monitors add` would."""
    if isinstance(store, MemoryEventStore):
        store.monitors[monitor.monitor_id] = monitor
        return
    assert database is not None and database.database_url
    conn = await asyncpg.connect(database.database_url)
    try:
        await set_monitor(conn, monitor, "contract")
    finally:
        await conn.close()
