"""Stalled partitions, as every role records them in PostgreSQL: a processor's batches or the
projector's steps that failed `stall_failures` times in a row (see processor.narrowing for why
a single record never stalls a partition, and what still can)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.db import Conn
from storage.projection_store import LIVE

_STALLS_SQL = """
SELECT 'processor' AS role, partition, failures_in_a_row, last_error, failing_since
  FROM partition_state WHERE topic = $1 AND failures_in_a_row >= $2
UNION ALL
SELECT 'projector', partition, failures_in_a_row, last_error, failing_since
  FROM projection_checkpoints WHERE projection = $3 AND failures_in_a_row >= $2
ORDER BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class Stall:
    role: str  # processor or projector
    partition: int
    failures_in_a_row: int
    last_error: str | None
    failing_since: datetime | None

    def describe(self) -> str:
        since = self.failing_since.isoformat(timespec="seconds") if self.failing_since else "?"
        return (
            f"{self.role} partition {self.partition}: {self.failures_in_a_row} failures in a row"
            f" since {since}, last {self.last_error}"
        )


async def stalls(conn: Conn, commands_topic: str, failures_min: int) -> list[Stall]:
    """Partitions failing at least `failures_min` times in a row, processor's then projector's."""
    rows = await conn.fetch(_STALLS_SQL, commands_topic, failures_min, LIVE.checkpoint)
    return [Stall(**dict(r)) for r in rows]
