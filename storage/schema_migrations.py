"""Idempotent schema migrations: numbered SQL files applied once each, in order.

Concurrent `wallet migrate` runs (several containers starting at once) serialise on an advisory
lock; each file runs in its own transaction with its row in `schema_migrations`.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg
import structlog

_LOCK_ID = 0x57414C4C  # "WALL": one advisory lock for every migrator of this schema
log = structlog.get_logger("wallet.migrate")
MIGRATIONS_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    assert len({v for v, _, _ in found}) == len(found), "two migrations share a version"
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the names applied (empty when up to date)."""
    await conn.execute(MIGRATIONS_TABLE_SQL)
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("migration applied", migration=name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


# What the service (processors, projector, API, operator commands) may do to each table. The
# ledger tables get SELECT and INSERT only: UPDATE, DELETE and TRUNCATE are refused twice, by
# privilege and by the append-only triggers, and a role that does not own the tables cannot
# disable those triggers either. Migrations run as the owner; the service should not.
SERVICE_GRANTS = {
    "processed_commands": "SELECT, INSERT",
    "ledger_entries": "SELECT, INSERT",
    "partition_resets": "SELECT, INSERT",
    "dead_letter_requests": "SELECT, INSERT",
    "assets": "SELECT, INSERT, UPDATE",
    "lots": "SELECT, INSERT, UPDATE, DELETE",
    "holds": "SELECT, INSERT, UPDATE",  # kept once resolved: a second resolution is answered
    "account_limits": "SELECT, INSERT, UPDATE, DELETE",  # `wallet limits` (an operator's)
    "monitors": "SELECT, INSERT, UPDATE, DELETE",  # `wallet monitors` (an operator's)
    "schema_migrations": "SELECT",
    "partition_state": "SELECT, INSERT, UPDATE",
    "outbox_positions": "SELECT, INSERT, UPDATE",
    "api_keys": "SELECT, INSERT, UPDATE",
    "outbox": "SELECT, INSERT, DELETE",
    "balances": "SELECT, INSERT, UPDATE, DELETE",
    "system_totals": "SELECT, INSERT, UPDATE, DELETE",
    "balances_replay": "SELECT, INSERT, UPDATE, DELETE, TRUNCATE",
    "system_totals_replay": "SELECT, INSERT, UPDATE, DELETE, TRUNCATE",
    "projection_checkpoints": "SELECT, INSERT, UPDATE, DELETE",
    "unpublished_messages": "SELECT",  # a view
}
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def grant_service_role(conn: asyncpg.Connection, role: str) -> None:
    """Give an existing role exactly what the service needs on this database's tables."""
    if not _ROLE_NAME.fullmatch(role):
        raise ValueError(f"not a plain role name: {role!r}")
    async with conn.transaction():
        for table, privileges in SERVICE_GRANTS.items():
            await conn.execute(f"GRANT {privileges} ON {table} TO {role}")
        await conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
