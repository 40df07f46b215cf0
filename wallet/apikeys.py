"""API keys for the HTTP API: created and revoked by the CLI, checked on every request.

A key reads `dw_<key id>_<secret>`: the id (16 hex digits) finds the row, the secret (256 random
bits) proves possession. Only SHA-256 of the secret is stored, and the check compares digests
with `hmac.compare_digest`, in constant time; an unknown id is compared against a dummy digest,
so the comparison runs either way. (Key ids are not secret: they name keys in `wallet keys
list` and in logs.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from storage.db import Conn

SCOPES = ("commands:write", "wallets:read", "ops")
KEY_PREFIX = "dw"
_KEY_PATTERN = re.compile(r"^dw_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"no such key").digest()
CACHE_ENTRIES_MAX = 10_000


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    found = _KEY_PATTERN.fullmatch(token)
    return (found.group(1), found.group(2)) if found else None


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


async def create_key(conn: Conn, name: str, scopes: list[str]) -> str:
    """Store a new key's digest and return the key: the only time it exists in clear."""
    unknown = set(scopes) - set(SCOPES)
    assert scopes and not unknown, f"unknown scopes: {sorted(unknown)}"
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO api_keys (key_id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4)",
        key_id,
        name,
        _digest(secret),
        sorted(set(scopes)),
    )
    return f"{KEY_PREFIX}_{key_id}_{secret}"


async def list_keys(conn: Conn) -> list[KeyInfo]:
    rows = await conn.fetch(
        "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at"
    )
    return [
        KeyInfo(r["key_id"], r["name"], tuple(r["scopes"]), r["created_at"], r["revoked_at"])
        for r in rows
    ]


async def revoke_key(conn: Conn, name: str) -> bool:
    """Revoke the live key called `name`; False when there is none."""
    done = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return done == "UPDATE 1"


class KeyVerifier:
    """Checks keys against the table, caching rows for `cache_ttl_ms` (so a revocation takes
    effect within that time) in a bounded cache."""

    def __init__(self, pool: asyncpg.Pool, cache_ttl_ms: int) -> None:
        self._pool = pool
        self._ttl_s = cache_ttl_ms / 1000
        self._cache: dict[str, tuple[float, bytes, frozenset[str]]] = {}

    async def scopes(self, token: str) -> frozenset[str] | None:
        """The key's scopes, or None when it is malformed, unknown, revoked or wrong."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        stored, scopes = await self._row(key_id)
        matches = hmac.compare_digest(_digest(secret), stored or _DUMMY_HASH)
        return scopes if matches and stored is not None else None

    async def _row(self, key_id: str) -> tuple[bytes | None, frozenset[str]]:
        now_s = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now_s:
            return cached[1], cached[2]
        row = await self._pool.fetchrow(
            "SELECT secret_hash, scopes FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
            key_id,
        )
        if row is None:
            self._cache.pop(key_id, None)
            return None, frozenset()
        if len(self._cache) >= CACHE_ENTRIES_MAX:
            self._cache.clear()  # crude but bounded: live keys are few, refilled on demand
        entry = (now_s + self._ttl_s, bytes(row["secret_hash"]), frozenset(row["scopes"]))
        self._cache[key_id] = entry
        return entry[1], entry[2]
