"""The projection worker: follows each partition's ledger entries and maintains `balances` and
`system_totals` through a ProjectionStore (exactly once: see storage.projection_store why)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from foundation import metrics
from storage.db import RETRIABLE_DB_ERRORS, Failure, failure_kind
from storage.projection_store import LIVE, ProjectionStore

log = structlog.get_logger("wallet.projector")
IDLE_SLEEP_S = 0.05
PARTITIONS_REFRESH_S = 5.0
BACKOFF_MAX_S = 5.0
LAG_REFRESH_S = 1.0
HEALTHY_ROUND_S = 60.0  # > the longest round: a batch's statement under db_timeout_ms


class Projector:
    """Runs the live projection until stopped.

    Why each partition fails on its own: one partition's entries may fail to apply (a total
    past what a column holds once did, on every retry), and a round that stopped at the first
    failure froze the balances of every partition after it. A failing partition is retried
    with its own backoff while the others go on, and its failures are recorded for /ready.
    """

    def __init__(self, store: ProjectionStore) -> None:
        self._store = store
        self._looped_at_s: float | None = None  # monotonic time the last round ended
        self._partitions: list[int] = []
        self._positions: dict[int, int] = {}  # partition -> our checkpoint, read once, then kept
        self._failures: dict[int, int] = {}  # partition -> steps failed in a row
        self._retry_at_s: dict[int, float] = {}  # partition -> monotonic time to try again

    def health(self) -> dict[str, Any] | None:
        """For /health: None before the first round or when no round ended for a while (a
        database outage does not count: failed rounds end too, with a backoff)."""
        if self._looped_at_s is None or time.monotonic() - self._looped_at_s > HEALTHY_ROUND_S:
            return None
        failing = sorted(p for p, n in self._failures.items() if n)
        return {"partitions": len(self._partitions), "failing": failing}

    async def run(self, stop: asyncio.Event) -> None:
        log.info("projector started")
        refreshed_at_s = lag_at_s = 0.0
        backoff_s = IDLE_SLEEP_S
        while not stop.is_set():
            applied = 0
            try:
                now_s = time.monotonic()
                if now_s - refreshed_at_s > PARTITIONS_REFRESH_S or not self._partitions:
                    self._partitions = await self._store.known_partitions()
                    refreshed_at_s = now_s
                for partition in self._partitions:
                    applied += await self._step_alone(partition)
                if now_s - lag_at_s > LAG_REFRESH_S:
                    metrics.PROJECTOR_LAG_SECONDS.set_all(await self._store.lag_by_partition(LIVE))
                    lag_at_s = now_s
                metrics.PROJECTED_ENTRIES.inc(applied)
                backoff_s = IDLE_SLEEP_S
            except RETRIABLE_DB_ERRORS as exc:  # no connection, or no partition list
                log.error("projection failed; retrying", error=repr(exc), backoff_s=backoff_s)
                self._positions.clear()  # a commit whose answer was lost may have moved them
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            self._looped_at_s = time.monotonic()
            metrics.PROJECTOR_FAILURES.set_all(self._failures)
            if applied == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s)
        log.info("projector stopped")

    async def _step_alone(self, partition: int) -> int:
        """One partition's step; its failure is its own (see the class docstring)."""
        if time.monotonic() < self._retry_at_s.get(partition, 0.0):
            return 0
        try:
            count = await self._step(partition)
        except AssertionError:
            raise
        except Exception as exc:  # the partition is retried later: see the class docstring
            await self._failed(partition, exc)
            return 0
        if self._failures.pop(partition, None) is not None:
            self._retry_at_s.pop(partition, None)
            log.info("projection of the partition recovered", partition=partition)
        return count

    async def _failed(self, partition: int, exc: Exception) -> None:
        self._positions.pop(partition, None)  # a commit whose answer was lost may have moved it
        failures = self._failures.get(partition, 0) + 1
        self._failures[partition] = failures
        backoff_s = min(IDLE_SLEEP_S * 2**failures, BACKOFF_MAX_S)
        self._retry_at_s[partition] = time.monotonic() + backoff_s
        kind = failure_kind(exc)
        log.error("projection of a partition failed; retrying", partition=partition,
                  failures_in_a_row=failures, error=kind, backoff_s=backoff_s)  # fmt: skip
        with contextlib.suppress(*RETRIABLE_DB_ERRORS):  # the database may be what failed
            await self._store.record_failure(LIVE, partition, Failure(failures, kind))

    async def _step(self, partition: int) -> int:
        after = self._positions.get(partition)
        if after is None:
            after = await self._store.checkpoint(LIVE, partition)
        result = await self._store.apply_next(LIVE, partition, after)
        if result.position is None:
            self._positions.pop(partition, None)
        else:
            self._positions[partition] = result.position
        return result.count
