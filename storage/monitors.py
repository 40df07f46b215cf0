"""Monitors, as operators set them (`wallet monitors`, `/ops/monitors`); the writer evaluates
them (ledger.monitors, processor.monitors)."""

from __future__ import annotations

from typing import Any

from ledger.monitors import MONITORS_MAX
from storage.db import Conn

_ADD_SQL = """
INSERT INTO monitors (monitor_id, kind, asset, threshold, window_s, created_by)
SELECT $1, $2, $3, $4, $5, $6
 WHERE (SELECT count(*) FROM monitors WHERE monitor_id <> $1) < $7
ON CONFLICT (monitor_id) DO UPDATE
   SET kind = EXCLUDED.kind, asset = EXCLUDED.asset, threshold = EXCLUDED.threshold,
       window_s = EXCLUDED.window_s, created_by = EXCLUDED.created_by, created_at = now()
"""


class TooManyMonitorsError(Exception):
    """The deployment has MONITORS_MAX monitors already (each transaction checks them all)."""


async def set_monitor(conn: Conn, monitor: tuple[str, str, str, int, int | None], by: str) -> None:
    """Add or replace a monitor (id, kind, asset, threshold, window_s); processors apply it
    from their next reload (WALLET_MONITORS_RELOAD_MS)."""
    done = await conn.execute(_ADD_SQL, *monitor, by, MONITORS_MAX)
    if done.endswith(" 0"):
        raise TooManyMonitorsError(f"there are {MONITORS_MAX} monitors already")


async def remove_monitor(conn: Conn, monitor_id: str) -> bool:
    """Remove a monitor; whether there was one."""
    done = await conn.execute("DELETE FROM monitors WHERE monitor_id = $1", monitor_id)
    return done != "DELETE 0"


async def list_monitors(conn: Conn) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM monitors ORDER BY monitor_id")
    return [{"monitorId": r["monitor_id"], "kind": r["kind"], "assetId": r["asset"],
             "threshold": r["threshold"], "windowS": r["window_s"],
             "createdBy": r["created_by"], "createdAt": r["created_at"].isoformat()}
            for r in rows]  # fmt: skip
