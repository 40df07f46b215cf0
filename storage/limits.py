"""Daily caps per user and asset, as operators set them (`wallet limits`, `PUT /ops/limits`);
the writer applies them (ledger.caps, processor.caps)."""

from __future__ import annotations

from typing import Any

from storage.db import Conn

_UPSERT_SQL = """
INSERT INTO account_limits (user_id, asset, daily_spend_max, daily_transfer_out_max, set_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id, asset) DO UPDATE
   SET daily_spend_max = EXCLUDED.daily_spend_max,
       daily_transfer_out_max = EXCLUDED.daily_transfer_out_max,
       set_by = EXCLUDED.set_by, updated_at = now()
"""


async def set_limits(
    conn: Conn,
    user_id: str,
    asset: str,
    caps: tuple[int | None, int | None],
    set_by: str,
) -> None:
    """Set a wallet's daily caps (spend, transfer out); (None, None) removes them. They apply
    from a processor's next batch of the wallet (the first cap ever: within a second)."""
    spend_max, transfer_out_max = caps
    if spend_max is None and transfer_out_max is None:
        await conn.execute("DELETE FROM account_limits WHERE user_id = $1 AND asset = $2",
                           user_id, asset)  # fmt: skip
        return
    await conn.execute(_UPSERT_SQL, user_id, asset, spend_max, transfer_out_max, set_by)


async def list_limits(conn: Conn, user_id: str | None = None) -> list[dict[str, Any]]:
    """Every capped wallet (or one user's), with who set its caps and when."""
    rows = await conn.fetch(
        "SELECT user_id, asset, daily_spend_max, daily_transfer_out_max, set_by, updated_at"
        " FROM account_limits WHERE $1::text IS NULL OR user_id = $1 ORDER BY 1, 2 LIMIT 10000",
        user_id,
    )
    return [{"userId": r["user_id"], "assetId": r["asset"],
             "dailySpendMax": r["daily_spend_max"],
             "dailyTransferOutMax": r["daily_transfer_out_max"], "setBy": r["set_by"],
             "updatedAt": r["updated_at"].isoformat()} for r in rows]  # fmt: skip
