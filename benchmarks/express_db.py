"""The database of the Express wallet run beside this one by benchmarks/http_vs_express.sh, on
the stack's PostgreSQL (WALLET_DATABASE_URL).

    express_db.py create         a fresh database; prints the DB_* variables its knexfile reads
    express_db.py fund USERS     accounts http-0 .. http-USERS-1, each credited 10^9 by the
                                 treasury its seed made (run after its migrations and seed)
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import urlsplit

import asyncpg

DATABASE = "express_wallet"
FUNDING = 1_000_000_000


async def create(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()
    parts = urlsplit(url)
    print(f"export DB_HOST={parts.hostname} DB_PORT={parts.port or 5432}"
          f" DB_USER={parts.username or 'postgres'} DB_PASSWORD={parts.password or ''}"
          f" DB_NAME={DATABASE}")  # fmt: skip


async def fund(url: str, users: int) -> None:
    parts = urlsplit(url)
    conn = await asyncpg.connect(parts._replace(path=f"/{DATABASE}").geturl(), timeout=10)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO accounts (account_type, owner_id, name, asset_id)
                SELECT 'user', 'http-' || n, 'http-' || n, a.id
                  FROM generate_series(0, $1 - 1) n, assets a WHERE a.code = 'GOLD'
                """,
                users,
            )
            await conn.execute(
                """
                INSERT INTO ledger_entries (transaction_id, debit_account_id, credit_account_id,
                                            amount, asset_id, type, description)
                SELECT gen_random_uuid(), t.id, u.id, $1, u.asset_id, 'topup', 'funding'
                  FROM accounts u, accounts t
                 WHERE u.owner_id LIKE 'http-%' AND t.name = 'Treasury'
                   AND t.asset_id = u.asset_id
                """,
                FUNDING,
            )
    finally:
        await conn.close()


def main() -> None:
    url = os.environ["WALLET_DATABASE_URL"]
    if sys.argv[1:2] == ["create"]:
        asyncio.run(create(url))
    elif sys.argv[1:2] == ["fund"]:
        asyncio.run(fund(url, int(sys.argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
