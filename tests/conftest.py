"""Shared fixtures: the services (embedded or from WALLET_* variables) and a fresh wallet per test.

Each test gets its own database and its own topic names, created here and dropped afterwards,
so tests never see what another test (or an earlier run) left behind.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from foundation.settings import Settings
from messaging.kafka import ensure_topics
from tests.integration.processes import PROCESS_ROOT
from wallet.devstack import EmbeddedPostgres, TansuBroker
from wallet.embedded_kafka import KafkaCluster
from wallet.stack import (
    Services,
    broker_kind,
    embedded_services,
    ensure_database,
    prepare,
    start_broker,
)

# Which broker the session's services run on, in words: printed at the end of the run.
_BROKER_USED: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the processes' folders, whichever tests ran (unit-only runs included)."""
    shutil.rmtree(PROCESS_ROOT, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which broker the integration tests ran on (none when only unit tests ran)."""
    for broker in _BROKER_USED:
        terminalreporter.write_line(f"broker used by this run: {broker}")


@functools.cache
def _session_broker_is_tansu() -> bool:
    """Whether the session's embedded broker will be Tansu (decided without starting it)."""
    if os.environ.get("WALLET_KAFKA_BOOTSTRAP"):
        return False
    return broker_kind(os.environ.get("WALLET_EMBEDDED_BROKER", "auto")) == "tansu"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests about Tansu itself run only where the session's broker is Tansu."""
    if item.get_closest_marker("tansu_only") and not _session_broker_is_tansu():
        pytest.skip("about the Tansu broker: runs in the Tansu run (WALLET_EMBEDDED_BROKER=tansu)")


def _base_settings(data_dir: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        database_url=os.environ.get("WALLET_DATABASE_URL"),
        kafka_bootstrap=os.environ.get("WALLET_KAFKA_BOOTSTRAP"),
        embedded_broker=os.environ.get("WALLET_EMBEDDED_BROKER", "auto"),
    )


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """PostgreSQL and a Kafka-protocol broker for the whole run: Apache Kafka wherever Java
    17+ and Maven exist (required under CI), Tansu otherwise or when asked for."""
    data_dir = Path(tempfile.mkdtemp(prefix="wallet-test-"))
    try:
        with embedded_services(_base_settings(data_dir), durable=False) as found:
            _BROKER_USED.append(found.broker)
            yield found
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def on_tansu(services: Services) -> bool:
    return services.on_tansu


@pytest.fixture
async def stack(services: Services) -> AsyncIterator[Settings]:
    """Settings for a brand-new wallet: its own database and topics, migrated and created."""
    name = f"wallet_test_{uuid.uuid4().hex[:12]}"
    server_url = services.database_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{server_url}/postgres", timeout=10)
    await admin.execute(f'CREATE DATABASE "{name}"')
    settings = fresh_settings(f"{server_url}/{name}", services)
    await prepare(settings)
    try:
        yield settings
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
        await delete_topics(settings)


def fresh_settings(database_url: str, services: Services) -> Settings:
    """A test's settings: its own topic names, small timeouts so faults are noticed quickly."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        kafka_bootstrap=services.kafka_bootstrap,
        commands_topic=f"{prefix}.wallet.commands",
        replies_topic=f"{prefix}.wallet.replies",
        events_topic=f"{prefix}.wallet.events",
        alerts_topic=f"{prefix}.wallet.alerts",
        dlq_topic=f"{prefix}.wallet.commands.dlq",
        consumer_group=f"{prefix}-processor",
        partitions=4,
        producer_idempotence=not services.on_tansu,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        db_timeout_ms=15_000,
    )


def _embedded_only(variable: str) -> None:
    if os.environ.get(variable):
        pytest.skip(f"stops and restarts an embedded server; not run with {variable} set")


@pytest.fixture
async def own_broker(
    stack: Settings,
) -> AsyncIterator[tuple[TansuBroker | KafkaCluster, Settings]]:
    """A private embedded broker of the session's kind this test may stop, pause and restart
    (Kafka restarts on its log folder; Tansu restarts empty)."""
    _embedded_only("WALLET_KAFKA_BOOTSTRAP")
    folder = Path(tempfile.mkdtemp(prefix="wallet-broker-"))
    broker = start_broker(_base_settings(folder), folder)
    try:
        settings = stack.model_copy(update={"kafka_bootstrap": broker.start()})
        await ensure_topics(settings)
        yield broker, settings
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def own_postgres(services: Services) -> AsyncIterator[tuple[EmbeddedPostgres, Settings]]:
    """A private embedded PostgreSQL server this test may stop and restart (same port, same
    data), with the shared broker."""
    _embedded_only("WALLET_DATABASE_URL")
    folder = Path(tempfile.mkdtemp(prefix="wallet-pg-"))
    server = EmbeddedPostgres(folder / "pg", durable=False)
    try:
        database_url = server.start().rsplit("/", 1)[0] + "/wallet"
        await ensure_database(database_url, timeout_s=10)
        settings = fresh_settings(database_url, services)
        await prepare(settings)
        yield server, settings
        await delete_topics(settings)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def delete_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await asyncio.wait_for(admin.start(), 10)
        topics = [settings.commands_topic, settings.replies_topic, settings.events_topic]
        await asyncio.wait_for(
            admin.delete_topics([*topics, settings.dlq_topic, settings.alerts_topic]), 10
        )
    except Exception:  # cleanup is best effort: a broker may refuse to delete topics
        pass
    finally:
        await admin.close()
