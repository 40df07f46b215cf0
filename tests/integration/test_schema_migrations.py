"""Migrations and the service role: the service, granted by `wallet grant`, runs the whole
write path yet cannot change or erase the ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foundation.settings import Settings
from tests.integration.helpers import client_for, command, running_processor
from tests.integration.processes import run_wallet


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
