"""Read queries: balances (projected, or straight from the ledger), history, one transaction,
one transfer, one purchase."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from projections.balance_cache import Accounts, Holding, balances_of
from storage.db import Conn
from storage.projection_store import LIVE, projected_accounts

HISTORY_LIMIT_MAX = 200


async def balances(conn: Conn, user_id: str, consistent: bool) -> dict[str, Holding]:
    """Every asset's holding; `consistent` reads the ledger instead of the projection."""
    if not consistent:
        return balances_of(await projected_accounts(conn, LIVE, user_id))
    return balances_of(await ledger_accounts(conn, user_id))


async def latest_entries(
    conn: Conn, user_id: str, before: datetime | None = None, asset: str | None = None
) -> list[asyncpg.Record]:
    """Per asset (or the one named), in asset order, the user's latest entry by version, or
    the latest recorded before `before`: its version, balance_after, paid_after, held_after
    and debt_after (the account as that entry left it)."""
    return await conn.fetch(
        """
        SELECT a.code AS asset, e.balance_after, e.version, e.paid_after, e.held_after,
               e.debt_after
          FROM assets a
          CROSS JOIN LATERAL (
                SELECT balance_after, version, paid_after, held_after, debt_after
                  FROM ledger_entries
                 WHERE account_kind = 'user' AND user_id = $1 AND asset = a.code
                   AND ($2::timestamptz IS NULL OR created_at < $2)
                 ORDER BY version DESC LIMIT 1) e
         WHERE $3::text IS NULL OR a.code = $3
         ORDER BY a.code
        """,
        user_id,
        before,
        asset,
    )


async def ledger_accounts(conn: Conn, user_id: str) -> Accounts:
    """Each asset's (balance, version, paid, held, debt) as the ledger's latest entry of the
    user says."""
    rows = await latest_entries(conn, user_id)
    # The latest entry of every account carries its paid part (migration 008 gave it to
    # the accounts it found): no NULL reaches here.
    return {
        r["asset"]: (r["balance_after"], r["version"], r["paid_after"], r["held_after"] or 0,
                     r["debt_after"] or 0)
        for r in rows
    }  # fmt: skip


_ITEM_COLUMNS = """
    e.entry_id, e.transaction_id, c.type, e.asset, abs(e.amount) AS amount,
    CASE WHEN e.amount > 0 THEN 'credit' ELSE 'debit' END AS direction,
    e.balance_after, c.description, e.created_at, c.counterparty, c.transfer_id, c.purchase_id,
    c.sku
"""


async def history(
    conn: Conn, user_id: str, asset: str | None, limit: int, cursor: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    """A user's ledger entries, newest first; returns the page and the next page's cursor."""
    assert 1 <= limit <= HISTORY_LIMIT_MAX
    rows = await conn.fetch(
        f"""
        SELECT {_ITEM_COLUMNS}
          FROM ledger_entries e
          JOIN processed_commands c ON c.transaction_id = e.transaction_id
         WHERE e.account_kind = 'user' AND e.user_id = $1
           AND ($2::text IS NULL OR e.asset = $2)
           AND ($3::bigint IS NULL OR e.entry_id < $3)
         ORDER BY e.entry_id DESC
         LIMIT $4
        """,
        user_id,
        asset,
        cursor,
        limit + 1,
    )
    page = [_item(r) for r in rows[:limit]]
    next_cursor = rows[limit - 1]["entry_id"] if len(rows) > limit else None
    return page, next_cursor


async def transaction(conn: Conn, transaction_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"""
        SELECT {_ITEM_COLUMNS}, e.user_id, c.idempotency_key, c.command_id
          FROM ledger_entries e
          JOIN processed_commands c ON c.transaction_id = e.transaction_id
         WHERE e.transaction_id = $1 AND e.account_kind = 'user'
        """,
        transaction_id,
    )
    if row is None:
        return None
    item = _item(row)
    item.update(
        userId=row["user_id"],
        idempotencyKey=row["idempotency_key"],
        commandId=str(row["command_id"]),
    )
    return item


def _item(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "transactionId": str(row["transaction_id"]),
        "type": row["type"],
        "assetId": row["asset"],
        "amount": row["amount"],
        "direction": row["direction"],
        "balanceAfter": row["balance_after"],
        "description": row["description"],
        "time": row["created_at"].isoformat(),
        # A transfer's debit, credit or refund: the other player, and the transfer.
        "counterparty": row["counterparty"],
        "transferId": None if row["transfer_id"] is None else str(row["transfer_id"]),
        # A purchase's record (one per asset it moved): the purchase, and what was bought.
        "purchaseId": None if row["purchase_id"] is None else str(row["purchase_id"]),
        "sku": row["sku"],
    }


async def transfer(conn: Conn, transfer_id: uuid.UUID) -> dict[str, Any] | None:
    """A transfer and the steps recorded of it (ledger.transfers): pending while its amount
    is in flight (debited; not yet credited, nor given back), then completed or refused."""
    rows = await conn.fetch(
        """
        SELECT type, user_id, counterparty, asset, amount, status, error_code, error_message,
               reason, transaction_id, processed_at
          FROM processed_commands WHERE transfer_id = $1 ORDER BY processed_at, type
        """,
        transfer_id,
    )
    debit = next((r for r in rows if r["type"] == "transfer"), None)
    if debit is None:
        return None
    steps = {r["type"]: r for r in rows}
    credit, refund = steps.get("transfer_in"), steps.get("transfer_refund")
    status = "pending"
    if credit is not None and credit["status"] == "accepted":
        status = "completed"
    elif refund is not None and refund["status"] == "accepted":
        status = "refused"
    refusal = None
    if credit is not None and credit["status"] == "rejected":
        refusal = {"code": credit["error_code"], "message": credit["error_message"]}
    return {
        "transferId": str(transfer_id),
        "fromUserId": debit["user_id"],
        "toUserId": debit["counterparty"],
        "assetId": debit["asset"],
        "amount": debit["amount"],
        "status": status,
        "refusal": refusal,
        "steps": [_step(r) for r in rows],
    }


def _step(row: asyncpg.Record) -> dict[str, Any]:
    tx = row["transaction_id"]
    return {
        "type": row["type"],
        "userId": row["user_id"],
        "status": row["status"],
        "transactionId": None if tx is None else str(tx),
        "time": row["processed_at"].isoformat(),
    }


async def purchase(conn: Conn, purchase_id: uuid.UUID) -> dict[str, Any] | None:
    """A purchase and its records, one per asset it moved (ledger.purchases): the main one
    first, then the costs and the grants."""
    rows = await conn.fetch(
        """
        SELECT type, user_id, asset, amount, consumed_paid, sku, transaction_id, processed_at,
               idempotency_key LIKE 'purchase-part:%' AS part
          FROM processed_commands WHERE purchase_id = $1
         ORDER BY part, type = 'purchase_grant', asset, version
        """,
        purchase_id,
    )
    if not rows:
        return None
    main = rows[0]
    return {
        "purchaseId": str(purchase_id),
        "userId": main["user_id"],
        "sku": main["sku"],
        "kind": "conversion" if main["type"] == "conversion" else "item",
        "time": main["processed_at"].isoformat(),
        "parts": [
            {
                "type": r["type"],
                "assetId": r["asset"],
                "amount": r["amount"] if r["type"] == "purchase_grant" else -r["amount"],
                "paid": r["consumed_paid"],
                "transactionId": str(r["transaction_id"]),
            }
            for r in rows
        ],
    }
