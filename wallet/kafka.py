"""Kafka clients built from settings, and topic creation.

Every client gets explicit request timeouts; producers get bounded buffers. Producer
idempotence is a setting because the embedded broker cannot initialise idempotent producers.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from wallet.errors import ConfigError
from wallet.settings import Settings

log = structlog.get_logger("wallet.kafka")
_TOPIC_EXISTS = 36
MESSAGE_BYTES_MAX = 2 * 1024 * 1024
KEY_HASH_CACHE_MAX = 65_536


@functools.lru_cache(maxsize=KEY_HASH_CACHE_MAX)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner hash (murmur2, positive). Cached: aiokafka's is pure Python
    and a hot user's key is hashed for every command, reply and event."""
    return murmur2(key) & 0x7FFFFFFF


def partition_for(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this user id key."""
    return key_hash(user_id.encode("utf-8")) % partitions


class RecordBatches:
    """Records grouped per topic partition into record batches, sent a batch at a time.

    Why: `producer.send` costs a coroutine, a future and the partitioner per message, and was
    the largest cost of publishing replies. Appending to a batch builder is a C call; one
    future then stands for a whole batch. Order within a partition is kept: records are
    appended in call order, and a partition's batches are sent in the order they filled.
    Partitions are chosen here as the default partitioner would (murmur2 of the key).
    """

    def __init__(self, producer: AIOKafkaProducer, partition_counts: dict[str, int]) -> None:
        self._producer = producer
        self._partition_counts = partition_counts  # shared cache: topic -> partition count
        self._open: dict[tuple[str, int], BatchBuilder] = {}
        self._futures: list[asyncio.Future[Any]] = []

    async def add(self, topic: str, key: bytes | None, value: bytes) -> None:
        partition = await self._partition(topic, key)
        builder = self._open.get((topic, partition))
        if builder is None:
            builder = self._open[(topic, partition)] = self._producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value) is not None:
            return
        await self._send(topic, partition, builder)  # full: send it, start the next one
        builder = self._open[(topic, partition)] = self._producer.create_batch()
        appended = builder.append(timestamp=None, key=key, value=value)
        assert appended is not None, "an empty batch takes any one record"

    async def send(self) -> list[asyncio.Future[Any]]:
        """Send every open batch; return one delivery future per batch sent since creation."""
        for (topic, partition), builder in self._open.items():
            await self._send(topic, partition, builder)
        self._open.clear()
        futures, self._futures = self._futures, []
        return futures

    async def _send(self, topic: str, partition: int, builder: BatchBuilder) -> None:
        future = await self._producer.send_batch(builder, topic, partition=partition)
        self._futures.append(future)

    async def _partition(self, topic: str, key: bytes | None) -> int:
        partitions = self._partition_counts.get(topic)
        if partitions is None:
            partitions = len(await self._producer.partitions_for(topic))
            self._partition_counts[topic] = partitions
        # Keyless records (none of ours today) all go to partition 0: still one order.
        return key_hash(key) % partitions if key is not None else 0


def _common(settings: Settings) -> dict[str, Any]:
    _, bootstrap = settings.require_services()
    return {
        "bootstrap_servers": bootstrap,
        "request_timeout_ms": settings.kafka_timeout_ms,
        "client_id": "dino-wallet",
        **security_options(settings),
    }


def security_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's TLS and SASL options from the settings (every client gets the same)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        key_password = settings.kafka_ssl_key_password
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=key_password.get_secret_value() if key_password else None,
        )
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.kafka_sasl_password is not None  # the settings validate this
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


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
