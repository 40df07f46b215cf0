"""Migrations and the service role: the service, granted by `wallet grant`, runs the whole
write path yet cannot change or erase the ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foundation.settings import Settings
from storage.schema_migrations import MIGRATIONS_TABLE_SQL, migration_files
from tests.conftest import delete_topics, fresh_settings
from tests.integration.helpers import client_for, command, fetch, running_processor
from tests.integration.processes import run_wallet
from wallet.stack import Services, prepare


@pytest.fixture
async def service_role(stack: Settings) -> AsyncIterator[tuple[str, Settings]]:
    """A new login role granted by `wallet grant`; yields it and settings connecting as it."""
    assert stack.database_url is not None
    role = f"wallet_svc_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url, timeout=10)
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        granted = run_wallet(stack, "grant", role)
        assert granted.returncode == 0, granted.stderr
        scheme, rest = stack.database_url.split("://", 1)
        url = f"{scheme}://{role}@{rest.split('@', 1)[1]}"
        yield role, stack.model_copy(update={"database_url": url})
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


class TestServiceRole:
    async def test_the_granted_role_runs_the_write_path(
        self, service_role: tuple[str, Settings]
    ) -> None:
        """A processor connected as the service role claims, decides, commits and replies."""
        _, settings = service_role
        async with running_processor(settings), client_for(settings) as client:
            reply = await client.request(command("top_up", "vera", 40), timeout_s=60)
        assert reply.status == "accepted" and reply.balance == 40

    @pytest.mark.parametrize(
        "sql",
        ["UPDATE ledger_entries SET amount = amount + 1", "DELETE FROM ledger_entries",
         "TRUNCATE ledger_entries", "UPDATE processed_commands SET amount = 1",
         "DELETE FROM processed_commands", "TRUNCATE processed_commands",
         "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only",
         "SET session_replication_role = replica", "DROP TABLE ledger_entries"],
    )  # fmt: skip
    async def test_the_ledger_is_append_only_for_it(
        self, service_role: tuple[str, Settings], sql: str
    ) -> None:
        """Changing, erasing, un-guarding or dropping the ledger is refused to the service."""
        _, settings = service_role
        assert settings.database_url is not None
        conn = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        finally:
            await conn.close()

    def test_an_unknown_or_odd_role_name_is_refused(self, stack: Settings) -> None:
        """`wallet grant` names a missing role, and will not take an SQL fragment as one."""
        for role in ("no_such_role_x", "x; DROP TABLE assets"):
            refused = run_wallet(stack, "grant", role)
            assert refused.returncode == 1 and "Error" in refused.stderr, refused.stderr


_LEGACY_COMMAND = (
    "INSERT INTO processed_commands (user_id, idempotency_key, command_id, type, asset, amount,"
    " payload_hash, status, transaction_id, balance_after, topic, partition, source_offset,"
    " processed_at) VALUES ($1, $2, gen_random_uuid(), $3, 'GOLD', $4, '\\x00', 'accepted', $5,"
    " $6, 'old.commands', 0, $7, now())"
)
_LEGACY_ENTRIES = (
    "INSERT INTO ledger_entries (transaction_id, partition, asset, account_kind, user_id,"
    " amount, balance_after, version, created_at) VALUES ($1, 0, 'GOLD', 'user', $2, $3, $4,"
    " $5, now()), ($1, 0, 'GOLD', $6, NULL, -$3, NULL, NULL, now())"
)
_SOURCE = {"top_up": "treasury", "bonus": "bonus_pool", "spend": "revenue"}


async def _write_legacy(conn: asyncpg.Connection, user: str, steps: list[tuple[str, int]]) -> None:
    """A ledger as the code before lots wrote it: two legs per command, no paid part."""
    balance = 0
    for version, (kind, amount) in enumerate(steps, 1):
        change = -amount if kind == "spend" else amount
        balance += change
        tx = uuid.uuid4()
        await conn.execute(_LEGACY_COMMAND, user, f"k{version}", kind, amount, tx, balance,
                           version)  # fmt: skip
        await conn.execute(_LEGACY_ENTRIES, tx, user, change, balance, version, _SOURCE[kind])


@pytest.fixture
async def legacy_stack(services: Services) -> AsyncIterator[Settings]:
    """A wallet database at migration 007 holding balances written before lots, then
    prepared as `wallet up` would (migrated to the end, topics created)."""
    name = f"wallet_test_{uuid.uuid4().hex[:12]}"
    server_url = services.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{server_url}/postgres", timeout=10)
    await admin.execute(f'CREATE DATABASE "{name}"')
    settings = fresh_settings(f"{server_url}/{name}", services)
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await conn.execute(MIGRATIONS_TABLE_SQL)
        for version, file_name, sql in migration_files():
            if version <= 7:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version,
                                   file_name)  # fmt: skip
        await _write_legacy(conn, "old-paid", [("top_up", 100), ("bonus", 30), ("spend", 50)])
        await _write_legacy(conn, "old-mixed", [("bonus", 20), ("spend", 5), ("top_up", 10)])
        await _write_legacy(conn, "old-empty", [("bonus", 5), ("spend", 5)])
        await conn.close()
        await prepare(settings)
        yield settings
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
        await delete_topics(settings)


class TestLotsMigration:
    async def test_balances_from_before_lots_become_legacy_lots(
        self, legacy_stack: Settings
    ) -> None:
        """Migration 008 splits each old balance into free and paid lots as free_first would
        have left them, gives each account's latest entry its paid part, and verify is clean."""
        lots = await fetch(legacy_stack, "SELECT user_id, paid, remaining FROM lots"
                           " ORDER BY user_id, paid")  # fmt: skip
        assert [tuple(r) for r in lots] == [
            ("old-mixed", False, 15), ("old-mixed", True, 10), ("old-paid", True, 80)
        ]  # fmt: skip
        latest = await fetch(legacy_stack, "SELECT user_id, paid_after FROM ledger_entries"
                             " WHERE account_kind = 'user' AND version = 3")  # fmt: skip
        assert sorted(tuple(r) for r in latest) == [("old-mixed", 10), ("old-paid", 80)]
        audit = run_wallet(legacy_stack, "verify")
        assert audit.returncode == 0, audit.stdout + audit.stderr

    async def test_a_legacy_wallet_spends_its_free_lot_first(self, legacy_stack: Settings) -> None:
        """The processor loads an old account with its legacy lots and spends free first."""
        async with running_processor(legacy_stack), client_for(legacy_stack) as client:
            reply = await client.request(command("spend", "old-mixed", 20), timeout_s=60)
        assert reply.status == "accepted" and reply.balance == 5
        assert reply.consumed is not None and (reply.consumed.free, reply.consumed.paid) == (15, 5)
        assert (reply.paid, reply.free) == (5, 0)
