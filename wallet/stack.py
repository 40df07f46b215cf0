"""Bring a stack to life: embedded services when none are configured, schema, topics."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
import click

from foundation.errors import DevStackError
from foundation.settings import STACK_ENV_FILE, Settings
from messaging.kafka import ensure_topics
from storage.db import connection
from storage.schema_migrations import migrate
from wallet.devstack import EmbeddedPostgres, TansuBroker
from wallet.embedded_kafka import KAFKA_VERSION, KafkaCluster, missing_tools

DATABASE_NAME = "wallet"


Embedded = EmbeddedPostgres | TansuBroker | KafkaCluster
BrokerKind = Literal["kafka", "tansu"]


@dataclass
class Services:
    database_url: str
    kafka_bootstrap: str
    embedded: list[Embedded]

    @property
    def broker(self) -> str:
        """Which broker these services use, in words (the test run prints it)."""
        for service in self.embedded:
            if isinstance(service, KafkaCluster):
                return f"Apache Kafka {KAFKA_VERSION} (embedded, KRaft)"
            if isinstance(service, TansuBroker):
                return "Tansu (embedded, in memory)"
        return "external"

    @property
    def on_tansu(self) -> bool:
        """Tansu cannot initialise idempotent producers: clients must not ask for them."""
        return any(isinstance(s, TansuBroker) for s in self.embedded)


def broker_kind(setting: str) -> BrokerKind:
    """The embedded broker to run for WALLET_EMBEDDED_BROKER.

    `auto` falls back to Tansu where Java or Maven is missing, saying so in one line; never
    under CI, where a quiet fallback would hide that the suite did not run on Kafka.
    """
    if setting == "tansu":
        return "tansu"
    problem = missing_tools()
    if problem is None:
        return "kafka"
    if setting == "kafka" or os.environ.get("CI"):
        raise DevStackError(problem)
    click.echo(f"{problem}; using the Tansu broker instead", err=True)
    return "tansu"


def start_broker(settings: Settings, data_dir: Path) -> TansuBroker | KafkaCluster:
    if broker_kind(settings.embedded_broker) == "kafka":
        return KafkaCluster(data_dir / "kafka")
    return TansuBroker(data_dir / "broker.log")


@contextlib.contextmanager
def embedded_services(settings: Settings, durable: bool = True) -> Iterator[Services]:
    """Start the embedded PostgreSQL and/or broker for whatever the settings leave unset."""
    started: list[Embedded] = []
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
            broker = start_broker(settings, data_dir)
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
        + ("WALLET_PRODUCER_IDEMPOTENCE=false\n" if services.on_tansu else "")
    )
    return STACK_ENV_FILE
