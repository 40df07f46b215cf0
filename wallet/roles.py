"""The long-lived roles' entry points: each opens its pool, runs its role with the metrics
server beside it, and closes the pool on the way out."""

from __future__ import annotations

import asyncio

from foundation.settings import Settings
from processor.service import Processor
from projections.projector import Projector
from storage.db import create_pool
from storage.event_store import PostgresEventStore
from storage.projection_store import PostgresProjectionStore
from wallet.metrics_server import beside


async def run_processor(settings: Settings, stop: asyncio.Event) -> None:
    """The `wallet processor` entry point's body."""
    pool = await create_pool(settings)
    try:
        processor = Processor(settings, PostgresEventStore(pool, settings.db_timeout_ms / 1000))
        await beside(settings, "processor", processor.health, processor.run(stop))
    finally:
        await pool.close()


async def run_projector(settings: Settings, stop: asyncio.Event) -> None:
    """The `wallet projector` entry point's body."""
    pool = await create_pool(settings, size_max=2)
    try:
        projector = Projector(PostgresProjectionStore(pool))
        await beside(settings, "projector", projector.health, projector.run(stop))
    finally:
        await pool.close()
