"""The relay's published watermarks, stored beside its rounds instead of within them, and the
pruning of the outbox they allow.

Why beside: storing a watermark is a PostgreSQL round trip, and a round that waited for it
held every reply queued behind it for that long (under load, several milliseconds a round).
A watermark only says how far a partition's next owner may skip when it republishes; one
stored late makes it republish a little more, which delivery being at-least-once already
allows (readers dedupe by command id). So a round hands its marks over and returns; one task
stores the latest mark of each partition, then the next, and a failure to store is retried
without sending anything again. `flush` waits for what is pending: a partition given up (or
the processor stopping) stores its watermark first, so the next owner repeats as little as
it can.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from foundation.settings import Settings
from storage.db import RETRIABLE_DB_ERRORS
from storage.event_store import EventStore, PublishedMark

log = structlog.get_logger("wallet.outbox")
PRUNE_ROWS_MAX = 20_000  # per partition and pass: a pass stays short however far behind
Marks = dict[tuple[str, int], PublishedMark]


class Watermarks:
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self._store = store
        self._backoff_max_s = settings.retry_backoff_max_ms / 1000
        self._keep_rows = settings.outbox_keep_rows
        self._prune_interval_s = settings.outbox_prune_interval_ms / 1000
        self._prune_due_s = 0.0
        self._prune_marks: Marks = {}
        self._pending: Marks = {}  # published, not yet stored
        self._storing: asyncio.Task[None] | None = None

    def published(self, marks: Marks) -> None:
        """A round's marks (jobs of a partition are published in order: later marks are
        higher). Raises what ended the storing task, if anything did: a bug, never retried."""
        self.check()
        self._pending.update(marks)
        if self._storing is None:
            self._storing = asyncio.create_task(self._store_pending(), name="outbox-watermarks")

    def check(self) -> None:
        """Raise the storing task's failure, if it failed (the relay then ends, loudly)."""
        if self._storing is not None and self._storing.done():
            task, self._storing = self._storing, None
            task.result()

    async def flush(self) -> None:
        """Wait until every mark handed over is stored."""
        if self._storing is not None:
            await asyncio.shield(self._storing)
        self.check()

    async def close(self) -> None:
        """Stop storing: the processor is stopping and gave `flush` what time it could. Marks
        not stored yet are left to the next owner, which republishes a little more; the task
        must not outlive the processor (retrying against a database that is gone, or
        destroyed pending when the loop closes). A bug that ended it is raised."""
        if self._storing is None:
            return
        task, self._storing = self._storing, None
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if isinstance(outcome, Exception):
            raise outcome

    async def _store_pending(self) -> None:
        backoff_s = 0.05
        while self._pending:
            marks, self._pending = self._pending, {}
            try:
                await self._store.mark_published(list(marks.values()))
                await self._prune(marks)
                backoff_s = 0.05
            except RETRIABLE_DB_ERRORS as exc:
                log.warning("storing published watermarks failed; retrying", error=repr(exc))
                self._pending = marks | self._pending  # newer marks of a partition win
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)
        self._storing = None

    async def _prune(self, marks: Marks) -> None:
        """Keep the outbox bounded: now and then, delete what is long published."""
        self._prune_marks.update(marks)
        now_s = time.monotonic()
        if now_s < self._prune_due_s:
            return
        self._prune_due_s = now_s + self._prune_interval_s
        pending, self._prune_marks = list(self._prune_marks.values()), {}
        deleted = await self._store.prune_outbox(pending, self._keep_rows, PRUNE_ROWS_MAX)
        if deleted:
            log.debug("outbox pruned", rows=deleted)
