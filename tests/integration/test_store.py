"""The event store's contract (fencing, offsets) and the database's own second line of defence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from foundation.errors import FencedError, StorageRefusedError
from foundation.settings import Settings
from ledger.account import Asset
from ledger.plan import BatchContext, IdempotencyId, Intake, StoredResult, payload_hash, plan_batch
from storage.db import create_pool
from storage.event_store import BatchPosition, PostgresEventStore, PublishedMark, StaleOffsetError
from tests.integration.helpers import command, fetch

TOPIC = "contract.commands"
KnownResults = dict[IdempotencyId, StoredResult]


@pytest.fixture
async def store(stack: Settings) -> AsyncIterator[PostgresEventStore]:
    pool = await create_pool(stack)
    try:
        yield PostgresEventStore(pool, 10.0)
    finally:
        await pool.close()


def _plan(  # type: ignore[no-untyped-def]
    offset: int, amount: int, user: str = "zed", key: str = "", known: KnownResults | None = None
):
    cmd = command("top_up", user, amount, key=key or f"k{offset}")
    ctx = BatchContext(TOPIC, 0, 0, datetime.now(UTC))
    item = Intake(offset, user.encode(), cmd.encode(), cmd, payload_hash(cmd))
    return plan_batch(ctx, [item], known or {}, {}, {"GOLD": Asset()})


async def _loaded(
    store: PostgresEventStore, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """Each loaded account as (balance, version, paid part, open lots)."""
    found = await store.load_accounts(keys)
    return {k: (a.balance, a.version, a.paid, len(a.lots)) for k, a in found.items()}


def _position(epoch: int, first: int, nxt: int) -> BatchPosition:
    return BatchPosition(TOPIC, 0, epoch, 0, first, nxt, nxt - 1, b"fp")


class TestFencing:
    async def test_zombie_owner_is_refused_by_the_database(self, store: PostgresEventStore) -> None:
        """After a new owner claims the partition, the old owner's batch commit fails."""
        old = await store.claim_partition(TOPIC, 0, "old-owner")
        new = await store.claim_partition(TOPIC, 0, "new-owner")
        assert new.epoch == old.epoch + 1
        with pytest.raises(FencedError) as caught:
            await store.commit_batch(_position(old.epoch, 0, 1), _plan(0, 10))
        assert caught.value.code == "fenced"
        await store.commit_batch(_position(new.epoch, 0, 1), _plan(0, 10))

    async def test_batch_must_start_at_the_stored_offset(self, store: PostgresEventStore) -> None:
        """A batch that does not continue from the stored offset is refused as stale."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        await store.commit_batch(_position(claim.epoch, 0, 1), _plan(0, 10))
        with pytest.raises(StaleOffsetError):
            await store.commit_batch(_position(claim.epoch, 0, 2), _plan(1, 10))
        reclaimed = await store.claim_partition(TOPIC, 0, "owner")
        assert reclaimed.next_offset == 1 and reclaimed.last_fingerprint == b"fp"

    async def test_refused_batch_leaves_nothing_behind(
        self, store: PostgresEventStore, stack: Settings
    ) -> None:
        """A fenced batch writes no command, entry or outbox row."""
        old = await store.claim_partition(TOPIC, 0, "a")
        await store.claim_partition(TOPIC, 0, "b")
        with pytest.raises(FencedError):
            await store.commit_batch(_position(old.epoch, 0, 1), _plan(0, 10))
        assert await store.find_processed([("zed", "k0")]) == {}
        assert await store.load_accounts([("zed", "GOLD")]) == {}

    async def test_accounts_and_results_are_read_back(self, store: PostgresEventStore) -> None:
        """What a batch wrote is what the next owner loads."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        await store.commit_batch(_position(claim.epoch, 0, 1), _plan(0, 10))
        assert await _loaded(store, [("zed", "GOLD")]) == {("zed", "GOLD"): (10, 1, 10, 1)}
        found = await store.find_processed([("zed", "k0")])
        assert found[("zed", "k0")].status == "accepted"


@pytest.fixture
async def conn(stack: Settings) -> AsyncIterator[asyncpg.Connection]:
    assert stack.database_url
    connection = await asyncpg.connect(stack.database_url)
    try:
        yield connection
    finally:
        await connection.close()


_INSERT_ENTRIES = (
    "INSERT INTO ledger_entries (transaction_id, partition, asset, account_kind, user_id, amount,"
    " balance_after, version, created_at) VALUES "
)


class TestDatabaseConstraints:
    async def test_ledger_is_append_only(
        self, store: PostgresEventStore, conn: asyncpg.Connection
    ) -> None:
        """UPDATE, DELETE and TRUNCATE on ledger tables are refused."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        await store.commit_batch(_position(claim.epoch, 0, 1), _plan(0, 10))
        for sql in ["UPDATE ledger_entries SET amount = amount + 1", "DELETE FROM ledger_entries",
                    "TRUNCATE ledger_entries", "UPDATE processed_commands SET amount = 1",
                    "DELETE FROM processed_commands"]:  # fmt: skip
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)

    async def test_negative_balance_is_refused(self, conn: asyncpg.Connection) -> None:
        """A user entry with a negative balance-after cannot be stored."""
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                _INSERT_ENTRIES + "(gen_random_uuid(), 0, 'GOLD', 'user', 'u', -5, -5, 1, now())"
            )

    async def test_unbalanced_or_orphan_entries_are_refused(self, conn: asyncpg.Connection) -> None:
        """Entries that do not sum to zero, or belong to no accepted command, are refused."""
        for system_leg, error in [(-4, asyncpg.CheckViolationError),
                                  (-5, asyncpg.ForeignKeyViolationError)]:  # fmt: skip
            with pytest.raises(error):
                await conn.execute(
                    _INSERT_ENTRIES + "('00000000-0000-0000-0000-000000000001', 0, 'GOLD',"
                    " 'user', 'u', 5, 5, 1, now()),"
                    " ('00000000-0000-0000-0000-000000000001', 0, 'GOLD',"
                    f" 'treasury', NULL, {system_leg}, NULL, NULL, now())"
                )

    async def test_a_system_leg_beside_another_assets_transaction_is_refused(
        self, store: PostgresEventStore, conn: asyncpg.Connection
    ) -> None:
        """A system leg in another asset than its transaction's user leg is refused, however
        the amounts add up (each transaction and asset needs its own user leg)."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        await store.commit_batch(_position(claim.epoch, 0, 1), _plan(0, 10))
        tx = await conn.fetchval("SELECT transaction_id FROM processed_commands")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                _INSERT_ENTRIES + "($1, 0, 'GOLD', 'user', 'zed', 5, 15, 2, now()),"
                " ($1, 0, 'DIAMONDS', 'treasury', NULL, -5, NULL, NULL, now())",
                tx,
            )

    async def test_the_batch_check_keeps_its_settings(self, conn: asyncpg.Connection) -> None:
        """The batch check plans afresh and never scans a table whole, after every migration
        that replaced it."""
        config = await conn.fetchval(
            "SELECT proconfig FROM pg_proc WHERE proname = 'ledger_entries_check_batch'"
        )
        assert sorted(config) == ["enable_seqscan=off", "plan_cache_mode=force_custom_plan"]

    async def test_account_version_cannot_repeat(self, store: PostgresEventStore) -> None:
        """Two owners writing version 1 of one account: the second write fails whole, refused
        by the database as a unique violation (the store says so as its own error)."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        await store.commit_batch(_position(claim.epoch, 0, 1), _plan(0, 10))
        with pytest.raises(StorageRefusedError) as refused:
            await store.commit_batch(_position(claim.epoch, 1, 2), _plan(1, 10))
        assert refused.value.data["sqlstate"] == "23505"
        assert isinstance(refused.value.__cause__, asyncpg.UniqueViolationError)
        assert await _loaded(store, [("zed", "GOLD")]) == {("zed", "GOLD"): (10, 1, 10, 1)}


class TestOutboxWatermark:
    async def test_unpublished_rows_until_marked(self, store: PostgresEventStore) -> None:
        """Committed outbox rows stay unpublished until the owner marks them."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        await store.commit_batch(_position(claim.epoch, 0, 1), _plan(0, 10))
        assert [m.source_offset for m in await store.unpublished(TOPIC, 0, (0, 0), 10)] == [0]
        await store.mark_published([PublishedMark(TOPIC, 0, claim.epoch, 0, 1)])
        again = await store.claim_partition(TOPIC, 0, "owner")
        assert (again.published_generation, again.published_offset) == (0, 1)
        assert await store.unpublished(TOPIC, 0, (0, 1), 10) == []

    async def test_fenced_or_older_marks_change_nothing(self, store: PostgresEventStore) -> None:
        """A fenced owner cannot move the watermark, and it never moves backwards."""
        old = await store.claim_partition(TOPIC, 0, "old")
        new = await store.claim_partition(TOPIC, 0, "new")
        await store.mark_published([PublishedMark(TOPIC, 0, old.epoch, 0, 5)])
        assert (await store.claim_partition(TOPIC, 0, "x")).published_offset == 0
        latest = await store.claim_partition(TOPIC, 0, "y")
        await store.mark_published([PublishedMark(TOPIC, 0, latest.epoch, 0, 5)])
        await store.mark_published([PublishedMark(TOPIC, 0, latest.epoch, 0, 3)])
        assert (await store.claim_partition(TOPIC, 0, "z")).published_offset == 5
        assert new.epoch > old.epoch


def _on(partition: int, position: BatchPosition) -> BatchPosition:
    return BatchPosition(TOPIC, partition, position.epoch, 0, position.first_offset,
                         position.next_offset, position.last_offset, b"fp")  # fmt: skip


class TestManyPartitionsInOneCommit:
    async def test_commits_every_partition_together(
        self, store: PostgresEventStore, stack: Settings
    ) -> None:
        """One commit of two partitions' batches stores both batches and both offsets."""
        one = await store.claim_partition(TOPIC, 1, "owner")
        two = await store.claim_partition(TOPIC, 2, "owner")
        await store.commit_batches([
            (_on(1, _position(one.epoch, 0, 1)), _plan(0, 10, user="ann")),
            (_on(2, _position(two.epoch, 0, 3)), _plan(2, 20, user="bob")),
        ])  # fmt: skip
        offsets = await fetch(stack, "SELECT partition, next_offset FROM partition_state"
                                     " WHERE topic = $1 ORDER BY 1", TOPIC)  # fmt: skip
        assert [(r["partition"], r["next_offset"]) for r in offsets] == [(1, 1), (2, 3)]
        assert await _loaded(store, [("ann", "GOLD"), ("bob", "GOLD")]) == {
            ("ann", "GOLD"): (10, 1, 10, 1),
            ("bob", "GOLD"): (20, 1, 20, 1),
        }

    async def test_one_fenced_partition_rolls_back_all(
        self, store: PostgresEventStore, stack: Settings
    ) -> None:
        """If one partition has a newer owner, no batch of the commit is stored, and the error
        names that partition."""
        one = await store.claim_partition(TOPIC, 1, "owner")
        two = await store.claim_partition(TOPIC, 2, "owner")
        await store.claim_partition(TOPIC, 2, "usurper")
        with pytest.raises(FencedError) as caught:
            await store.commit_batches([
                (_on(1, _position(one.epoch, 0, 1)), _plan(0, 10, user="ann")),
                (_on(2, _position(two.epoch, 0, 1)), _plan(0, 20, user="bob")),
            ])  # fmt: skip
        assert caught.value.data["partition"] == 2
        assert not isinstance(caught.value, StaleOffsetError)
        assert await store.load_accounts([("ann", "GOLD"), ("bob", "GOLD")]) == {}
        left = await fetch(stack, "SELECT count(*) AS n FROM outbox")
        assert left[0]["n"] == 0


class TestOutboxPruning:
    async def test_keeps_the_newest_published_rows_and_never_unpublished_ones(
        self, store: PostgresEventStore, stack: Settings
    ) -> None:
        """Pruning deletes published rows beyond the newest `keep_rows`, never past the mark."""
        claim = await store.claim_partition(TOPIC, 0, "owner")
        for offset in range(6):  # one key six times: replies to offsets 1-5 are outbox rows
            known = await store.find_processed([("zed", "again")])
            plan = _plan(offset, 1, key="again", known=known)
            await store.commit_batch(_position(claim.epoch, offset, offset + 1), plan)
        mark = PublishedMark(TOPIC, 0, claim.epoch, 0, 4)  # offsets 0-3 published, 4-5 not
        await store.mark_published([mark])
        assert await store.prune_outbox([mark], keep_rows=1, limit=100) == 2
        left = await fetch(stack, "SELECT source_offset FROM outbox ORDER BY 1")
        assert [r["source_offset"] for r in left] == [3, 4, 5]
        assert await store.prune_outbox([mark], keep_rows=0, limit=100) == 1
        assert [m.source_offset for m in await store.unpublished(TOPIC, 0, (0, 4), 10)] == [4, 5]
