"""`wallet topics` against the session's broker: topics are created with the settings' configs,
and existing topics that would lose commands or cannot be replicated are refused."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from foundation.errors import ConfigError
from foundation.settings import DAY_MS, HOUR_MS, Settings
from messaging.kafka import ensure_topics

TIMEOUT_S = 15


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await asyncio.wait_for(admin.start(), TIMEOUT_S)
        yield admin
    finally:
        await admin.close()


def _topics(settings: Settings) -> list[str]:
    return [settings.commands_topic, settings.replies_topic, settings.events_topic,
            settings.dlq_topic]  # fmt: skip


async def _configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic's configs as the broker reports them."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in _topics(settings)]
    async with _admin(settings) as admin:
        responses = await asyncio.wait_for(admin.describe_configs(resources), TIMEOUT_S)
    return {
        r["resource_name"]: {e["config_names"]: e["config_value"] for e in r["config_entries"]}
        for response in responses
        for r in response.to_object()["resources"]
    }


@pytest.fixture
async def fresh(stack: Settings) -> AsyncIterator[Callable[..., Settings]]:
    """Makes copies of the test's settings with new topic names (none of them created yet);
    deletes every topic so named afterwards."""
    made: list[Settings] = []

    def make(**changes: object) -> Settings:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        names = {"commands_topic": f"{prefix}.wallet.commands",
                 "replies_topic": f"{prefix}.wallet.replies",
                 "events_topic": f"{prefix}.wallet.events",
                 "dlq_topic": f"{prefix}.wallet.commands.dlq"}  # fmt: skip
        made.append(stack.model_copy(update=names | changes))
        return made[-1]

    yield make
    for settings in made:
        with contextlib.suppress(Exception):  # best effort, as for the stack's own topics
            async with _admin(settings) as admin:
                await asyncio.wait_for(admin.delete_topics(_topics(settings)), TIMEOUT_S)


class TestCreatedTopics:
    async def test_configs_are_the_settings(self, fresh: Callable[..., Settings]) -> None:
        """Each topic is created with its own retention (values no broker has as defaults),
        the min ISR setting and cleanup.policy=delete; a second run finds them fine."""
        settings = fresh(commands_retention_ms=2 * DAY_MS, replies_retention_ms=2 * HOUR_MS,
                         events_retention_ms=-1, dlq_retention_ms=30 * DAY_MS)  # fmt: skip
        assert sorted(await ensure_topics(settings)) == sorted(_topics(settings))
        configs = await _configs(settings)
        retention = {name: configs[name]["retention.ms"] for name in _topics(settings)}
        assert retention == {
            settings.commands_topic: str(2 * DAY_MS), settings.replies_topic: str(2 * HOUR_MS),
            settings.events_topic: "-1", settings.dlq_topic: str(30 * DAY_MS),
        }  # fmt: skip
        for name in _topics(settings):
            assert configs[name]["cleanup.policy"] == "delete", name
            assert configs[name]["min.insync.replicas"] == "1", name
        assert await ensure_topics(settings) == []

    async def test_another_retention_is_left_with_a_warning(
        self, fresh: Callable[..., Settings]
    ) -> None:
        """An events topic an operator created with another retention is kept as it is, with a
        warning naming the setting."""
        settings = fresh()
        async with _admin(settings) as admin:
            topic = NewTopic(settings.events_topic, settings.partitions, 1,
                             topic_configs={"retention.ms": str(HOUR_MS)})  # fmt: skip
            await asyncio.wait_for(admin.create_topics([topic]), TIMEOUT_S)
        with structlog.testing.capture_logs() as logs:
            created = await ensure_topics(settings)
        assert settings.events_topic not in created and len(created) == 3
        warnings = [e["problem"] for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1 and "WALLET_EVENTS_RETENTION_MS" in warnings[0]
        assert (await _configs(settings))[settings.events_topic]["retention.ms"] == str(HOUR_MS)


class TestRefusedTopics:
    async def test_a_compacted_commands_topic(self, fresh: Callable[..., Settings]) -> None:
        """A commands topic created by hand with cleanup.policy=compact is a ConfigError naming
        the topic, the policy and the setting."""
        settings = fresh()
        async with _admin(settings) as admin:
            topic = NewTopic(settings.commands_topic, settings.partitions, 1,
                             topic_configs={"cleanup.policy": "compact"})  # fmt: skip
            await asyncio.wait_for(admin.create_topics([topic]), TIMEOUT_S)
        with pytest.raises(ConfigError) as refused:
            await ensure_topics(settings)
        message = str(refused.value)
        assert f"topic {settings.commands_topic!r} has cleanup.policy compact" in message
        assert "WALLET_COMMANDS_TOPIC" in message

    async def test_more_replicas_than_brokers(
        self, stack: Settings, fresh: Callable[..., Settings]
    ) -> None:
        """A replication factor above the number of brokers is a ConfigError naming the
        setting (Kafka answers INVALID_REPLICATION_FACTOR; a broker that creates the topic
        anyway reports fewer replicas, which is refused as well)."""
        async with _admin(stack) as admin:
            brokers = len((await asyncio.wait_for(admin.describe_cluster(), TIMEOUT_S))["brokers"])
        settings = fresh(topic_replication_factor=brokers + 1)
        with pytest.raises(ConfigError, match="WALLET_TOPIC_REPLICATION_FACTOR") as refused:
            await ensure_topics(settings)
        assert str(brokers + 1) in str(refused.value)
