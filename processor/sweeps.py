"""The loop every sweep of the processor runs in (processor.expiry_sweep,
processor.transfer_sweep): a round every interval, each bounded in time.

A failure of the database or the broker is logged and the next round tries again: a sweep's
work is always safe to repeat (its commands are idempotent), and a late round only delays it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiokafka.errors import KafkaError

from storage.db import RETRIABLE_DB_ERRORS

log = structlog.get_logger("wallet.processor")


async def every(
    interval_s: float, timeout_s: float, sweep: Callable[[], Awaitable[int]], what: str
) -> None:
    """Run `sweep` every `interval_s`, each round at most `timeout_s`; never returns."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.wait_for(sweep(), timeout_s)
        except (KafkaError, TimeoutError, *RETRIABLE_DB_ERRORS) as exc:
            log.warning("sweep failed; the next round tries again", sweep=what, error=repr(exc))
