"""Kafka clients built from settings, and topic creation.

Every client gets explicit request timeouts; producers get bounded buffers. Producer
idempotence is a setting because the embedded broker cannot initialise idempotent producers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from wallet.errors import ConfigError
from wallet.settings import Settings

log = structlog.get_logger("wallet.kafka")
_TOPIC_EXISTS = 36
MESSAGE_BYTES_MAX = 2 * 1024 * 1024


def _common(settings: Settings) -> dict[str, Any]:
    _, bootstrap = settings.require_services()
    return {
        "bootstrap_servers": bootstrap,
        "request_timeout_ms": settings.kafka_timeout_ms,
        "client_id": "dino-wallet",
    }


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **_common(settings),
        "acks": "all",
        "enable_idempotence": settings.producer_idempotence,
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
        "max_request_size": MESSAGE_BYTES_MAX,
        "compression_type": None,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **_common(settings),
        "enable_auto_commit": False,
        "fetch_max_bytes": settings.fetch_bytes_max,
        "max_partition_fetch_bytes": MESSAGE_BYTES_MAX,
        # The broker holds an empty fetch this long: it bounds the latency of a lone command.
        "fetch_max_wait_ms": max(settings.fetch_wait_ms, 5),
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the service's topics if missing; refuse a commands topic of another size.

    Why refuse: the partition count decides which partition owns a user. Changing it under a
    running service would let two partitions own one user; see the resize procedure in the
    README instead.
    """
    wanted = [
        settings.commands_topic,
        settings.replies_topic,
        settings.events_topic,
        settings.dlq_topic,
    ]
    admin = AIOKafkaAdminClient(**_common(settings))
    await asyncio.wait_for(admin.start(), settings.kafka_timeout_ms / 1000)
    try:
        response = await admin.create_topics(
            [NewTopic(name, settings.partitions, 1) for name in wanted],
            timeout_ms=settings.kafka_timeout_ms,
        )
        created = [t for t, code, *_ in response.topic_errors if code == 0]
        failed = [
            (t, code) for t, code, *_ in response.topic_errors if code not in (0, _TOPIC_EXISTS)
        ]
        if failed:
            raise ConfigError("topics could not be created", failed=failed)
        described = await admin.describe_topics([settings.commands_topic])
    finally:
        await admin.close()
    count = len(described[0]["partitions"])
    if count != settings.partitions:
        raise ConfigError(
            "the commands topic has a different partition count than WALLET_PARTITIONS",
            topic=settings.commands_topic,
            actual=count,
            configured=settings.partitions,
        )
    for name in created:
        log.info("topic created", topic=name, partitions=settings.partitions)
    return created
