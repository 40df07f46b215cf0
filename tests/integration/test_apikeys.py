"""API keys: what is stored, how they are checked and cached, and the `wallet keys` commands."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foundation.settings import Settings
from storage.db import create_pool
from tests.integration.processes import run_wallet
from wallet.apikeys import SCOPES, KeyVerifier, create_key, parse_key, revoke_key

KEY_SHAPE = re.compile(r"^dw_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")


@pytest.fixture
async def conn(stack: Settings) -> AsyncIterator[asyncpg.Connection]:
    assert stack.database_url is not None
    connection = await asyncpg.connect(stack.database_url, timeout=10)
    yield connection
    await connection.close()


class TestStorage:
    async def test_only_the_digest_of_the_secret_is_stored(self, conn: asyncpg.Connection) -> None:
        """The row holds SHA-256 of the secret; the key appears in no column."""
        key = await create_key(conn, "game-server", ["commands:write"])
        key_id, secret = parse_key(key) or ("", "")
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        assert row is not None and KEY_SHAPE.fullmatch(key)
        assert bytes(row["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
        assert all(secret not in str(value) for value in dict(row).values())
        assert list(row["scopes"]) == ["commands:write"]

    async def test_one_live_key_per_name_and_known_scopes_only(
        self, conn: asyncpg.Connection
    ) -> None:
        """A second live key of one name, or an unknown scope, is refused by the table."""
        await create_key(conn, "twice", ["ops"])
        with pytest.raises(asyncpg.UniqueViolationError):
            await create_key(conn, "twice", ["ops"])
        assert await revoke_key(conn, "twice")
        await create_key(conn, "twice", ["ops"])  # the name is free again once revoked
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_keys (key_id, name, secret_hash, scopes)"
                " VALUES ('00000000000000aa', 'x', $1, '{admin}')",
                b"\0" * 32,
            )


class TestVerifier:
    async def test_scopes_of_good_keys_and_none_for_bad_ones(
        self, conn: asyncpg.Connection, stack: Settings
    ) -> None:
        """A good key gives its scopes; malformed, unknown, wrong and revoked keys give None."""
        key = await create_key(conn, "reader", ["wallets:read", "ops"])
        pool = await create_pool(stack)
        try:
            verifier = KeyVerifier(pool, cache_ttl_ms=0)
            assert await verifier.scopes(key) == {"wallets:read", "ops"}
            unknown = "dw_0123456789abcdef_" + key[-43:]
            wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
            for bad in ["", "Bearer", key + "x", unknown, wrong]:
                assert await verifier.scopes(bad) is None, bad
            await revoke_key(conn, "reader")
            assert await verifier.scopes(key) is None
        finally:
            await pool.close()

    async def test_revocation_shows_after_the_cache_ttl(
        self, conn: asyncpg.Connection, stack: Settings
    ) -> None:
        """A cached key keeps working until its entry expires: the TTL bounds revocation."""
        key = await create_key(conn, "cached", list(SCOPES))
        pool = await create_pool(stack)
        try:
            cached = KeyVerifier(pool, cache_ttl_ms=60_000)
            assert await cached.scopes(key) is not None
            await revoke_key(conn, "cached")
            assert await cached.scopes(key) is not None  # still within its TTL
            assert await KeyVerifier(pool, cache_ttl_ms=0).scopes(key) is None
        finally:
            await pool.close()


class TestKeysCommands:
    def test_create_list_revoke(self, stack: Settings) -> None:
        """create prints the key once; list never shows it; revoke takes the name."""
        created = run_wallet(stack, "keys", "create", "studio-a", "--scope", "commands:write",
                             "--scope", "wallets:read")  # fmt: skip
        key = created.stdout.strip()
        assert created.returncode == 0 and KEY_SHAPE.fullmatch(key), created.stderr
        listed = run_wallet(stack, "keys", "list")
        assert "studio-a" in listed.stdout and "commands:write,wallets:read" in listed.stdout
        _, secret = parse_key(key) or ("", "")
        assert secret and secret not in listed.stdout + listed.stderr
        assert run_wallet(stack, "keys", "create", "studio-a", "--scope", "ops").returncode == 1
        assert run_wallet(stack, "keys", "create", "x", "--scope", "admin").returncode == 2
        revoked = run_wallet(stack, "keys", "revoke", "studio-a")
        assert revoked.returncode == 0 and "revoked" in revoked.stdout
        assert run_wallet(stack, "keys", "revoke", "studio-a").returncode == 1
        assert "revoked" in run_wallet(stack, "keys", "list").stdout
