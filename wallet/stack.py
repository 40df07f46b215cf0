"""Bring a stack to life: embedded services when none are configured, schema, topics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from processor.schema_migrations import migrate
from wallet.db import connection
from wallet.devstack import EmbeddedBroker, EmbeddedPostgres
from wallet.kafka import ensure_topics
from wallet.settings import STACK_ENV_FILE, Settings

DATABASE_NAME = "wallet"


@dataclass
class Services:
    database_url: str
    kafka_bootstrap: str
    embedded: list[EmbeddedPostgres | EmbeddedBroker]


@contextlib.contextmanager
def embedded_services(settings: Settings, durable: bool = True) -> Iterator[Services]:
    """Start the embedded PostgreSQL and/or broker for whatever the settings leave unset."""
    started: list[EmbeddedPostgres | EmbeddedBroker] = []
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        database_url = settings.database_url
        if not database_url:
            pg = EmbeddedPostgres(data_dir / "pg", durable=durable)
            started.append(pg)
            database_url = pg.start().rsplit("/", 1)[0] + f"/{DATABASE_NAME}"
        bootstrap = settings.kafka_bootstrap
        if not bootstrap:
            broker = EmbeddedBroker(data_dir / "broker.log")
            started.append(broker)
            bootstrap = broker.start()
        yield Services(database_url, bootstrap, started)
    finally:
        for service in reversed(started):
            service.stop()


async def ensure_database(database_url: str, timeout_s: float) -> None:
    """Create the database named in the URL if it is missing (embedded server only)."""
    server_url, name = database_url.rsplit("/", 1)
    conn = await asyncpg.connect(
        f"{server_url}/postgres", timeout=timeout_s, command_timeout=timeout_s
    )
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare(settings: Settings) -> list[str]:
    """Migrate the schema and create the topics; both are idempotent."""
    async with connection(settings) as conn:
        applied = await migrate(conn)
    await ensure_topics(settings)
    return applied


def write_stack_env(services: Services) -> Path:
    STACK_ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    STACK_ENV_FILE.write_text(
        f"WALLET_DATABASE_URL={services.database_url}\n"
        f"WALLET_KAFKA_BOOTSTRAP={services.kafka_bootstrap}\n"
        "WALLET_PRODUCER_IDEMPOTENCE=false\n"
    )
    return STACK_ENV_FILE
