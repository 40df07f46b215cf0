"""Kafka clients built from settings, and topic creation.

Every client gets explicit request timeouts; producers get bounded buffers. Producer
idempotence is a setting because the embedded broker cannot initialise idempotent producers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    UnsupportedVersionError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from foundation.errors import BrokerUnavailableError, ConfigError
from foundation.settings import Settings

log = structlog.get_logger("messaging.kafka")
T = TypeVar("T")
_TOPIC_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38
# UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE: what a broker answers for a topic created
# a moment ago whose metadata has not reached it yet.
_METADATA_PENDING = frozenset({3, 5})
_METADATA_POLL_S = 0.1
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


@dataclass(frozen=True, slots=True)
class SentBatch:
    """One record batch handed to the producer: its delivery future, and the tags given with
    its records (so that a failed batch's records alone can be sent again)."""

    topic: str
    future: asyncio.Future[Any]
    tags: list[Any]


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
        self._open: dict[tuple[str, int], tuple[BatchBuilder, list[Any]]] = {}
        self._sent: list[SentBatch] = []

    async def add(self, topic: str, key: bytes | None, value: bytes, tag: Any = None) -> None:
        """Append a record; `tag` comes back with its batch (see SentBatch)."""
        partition = await self._partition(topic, key)
        builder, tags = self._open.get((topic, partition)) or self._start(topic, partition)
        if builder.append(timestamp=None, key=key, value=value) is None:
            await self._send(topic, partition)  # full: send it, start the next one
            builder, tags = self._start(topic, partition)
            appended = builder.append(timestamp=None, key=key, value=value)
            assert appended is not None, "an empty batch takes any one record"
        tags.append(tag)

    async def send(self) -> list[asyncio.Future[Any]]:
        """Send every open batch; return one delivery future per batch sent since creation."""
        return [batch.future for batch in await self.send_tagged()]

    async def send_tagged(self) -> list[SentBatch]:
        """send(), with each batch's topic and the tags of its records."""
        for topic, partition in list(self._open):
            await self._send(topic, partition)
        sent, self._sent = self._sent, []
        return sent

    def _start(self, topic: str, partition: int) -> tuple[BatchBuilder, list[Any]]:
        opened = self._open[(topic, partition)] = (self._producer.create_batch(), [])
        return opened

    async def _send(self, topic: str, partition: int) -> None:
        """Hand a batch to the producer. A refusal to take it (metadata not ready, the queue
        full past its timeout) is its delivery failing: reported by its future, with its
        tags, like any other failure of the batch, so that its records are never lost."""
        builder, tags = self._open.pop((topic, partition))
        try:
            future = await self._producer.send_batch(builder, topic, partition=partition)
        except KafkaError as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        self._sent.append(SentBatch(topic, future, tags))

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


async def start_producer(producer: AIOKafkaProducer, settings: Settings) -> None:
    """Start a producer within kafka_timeout_ms, or stop it and raise one clear error.

    Why a special case for idempotence: a broker that cannot initialise idempotent producers
    (Tansu) answers InitProducerId with errors that aiokafka logs and retries until the start
    times out; the fix is a setting, so the error names it.
    """
    timeout_s = settings.kafka_timeout_ms / 1000
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(producer.stop(), timeout_s)
        if settings.producer_idempotence:
            raise ConfigError(
                "the Kafka producer did not start with idempotence on: if the broker cannot "
                "initialise idempotent producers (InitProducerId), set "
                "WALLET_PRODUCER_IDEMPOTENCE=false",
                error=repr(exc),
            ) from exc
        raise BrokerUnavailableError("the Kafka producer did not start", error=repr(exc)) from exc


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
        # Only what producers committed: a command a transactional producer aborted must never
        # move money. Records of open transactions wait until their producer ends them.
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the settings want it."""

    name: str
    name_setting: str  # the WALLET_* variable that names it
    retention_ms: int
    retention_setting: str
    replication_factor: int
    min_insync_replicas: int
    partitions: int
    commands: bool  # the commands topic: its partition count and clean-up policy are checked

    @property
    def configs(self) -> dict[str, str]:
        """The topic configs it is created with."""
        return {
            "min.insync.replicas": str(self.min_insync_replicas),
            "retention.ms": str(self.retention_ms),
            # Never compacted: the processor checks that the last record it processed is still
            # at its offset, and compaction would remove commands a restore must re-read.
            "cleanup.policy": "delete",
        }


@dataclass(frozen=True)
class TopicState:
    """One topic as the broker describes it."""

    name: str
    partitions: int
    replicas: int  # the fewest brokers holding a replica of any one of its partitions
    configs: Mapping[str, str]  # empty when the broker could not describe them


@dataclass(frozen=True)
class TopicProblem:
    """A difference between a topic and the settings; fatal ones stop `wallet topics`."""

    topic: str
    what: str
    actual: str
    wanted: str
    setting: str
    fatal: bool
    remedy: str

    def __str__(self) -> str:
        return (
            f"topic {self.topic!r} has {self.what} {self.actual}, the settings want "
            f"{self.wanted} ({self.setting}): {self.remedy}"
        )


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The five topics of the service, as the settings want them."""
    roles = [
        (settings.commands_topic, "COMMANDS", settings.commands_retention_ms),
        (settings.replies_topic, "REPLIES", settings.replies_retention_ms),
        (settings.events_topic, "EVENTS", settings.events_retention_ms),
        (settings.dlq_topic, "DLQ", settings.dlq_retention_ms),
        (settings.alerts_topic, "ALERTS", settings.alerts_retention_ms),
    ]
    return [
        TopicSpec(
            name=name,
            name_setting=f"WALLET_{role}_TOPIC",
            retention_ms=retention_ms,
            retention_setting=f"WALLET_{role}_RETENTION_MS",
            replication_factor=settings.topic_replication_factor,
            min_insync_replicas=settings.topic_min_insync_replicas,
            partitions=settings.partitions,
            commands=role == "COMMANDS",
        )
        for name, role, retention_ms in roles
    ]


def topic_problems(described: TopicState, wanted: TopicSpec) -> list[TopicProblem]:
    """How a topic differs from the settings. A config the broker did not report is not
    checked. Fewer replicas or in-sync replicas than wanted, another partition count or
    compaction on the commands topic are fatal; another retention is only reported: operators
    may tune it on the topic."""
    problems: list[TopicProblem] = []

    def found(
        what: str, actual: object, want: object, setting: str, remedy: str, fatal: bool = True
    ) -> None:
        problem = TopicProblem(wanted.name, what, str(actual), str(want), setting, fatal, remedy)
        problems.append(problem)

    if wanted.commands and described.partitions != wanted.partitions:
        remedy = "it decides which partition owns a user; see 'Changing the partition count'"
        found("partition count", described.partitions, wanted.partitions, "WALLET_PARTITIONS",
              remedy + " in docs/operations.md")  # fmt: skip
    if described.replicas < wanted.replication_factor:
        remedy = "add replicas (kafka-reassign-partitions.sh) or lower the setting"
        found("replication factor", described.replicas, wanted.replication_factor,
              "WALLET_TOPIC_REPLICATION_FACTOR", remedy)  # fmt: skip
    min_isr = _as_int(described.configs.get("min.insync.replicas"))
    if min_isr is not None and min_isr < wanted.min_insync_replicas:
        remedy = "raise it on the topic (kafka-configs.sh --alter) or lower the setting"
        found("min.insync.replicas", min_isr, wanted.min_insync_replicas,
              "WALLET_TOPIC_MIN_INSYNC_REPLICAS", remedy)  # fmt: skip
    policy = described.configs.get("cleanup.policy", "")
    if "compact" in policy:
        remedy = (
            "the processor checks that the last record it processed is still at its offset; "
            "set cleanup.policy=delete on the topic or use a new topic"
            if wanted.commands
            else "compaction keeps only the latest record per key; left as it is"
        )
        found("cleanup.policy", policy, "delete", wanted.name_setting, remedy, wanted.commands)
    retention = _as_int(described.configs.get("retention.ms"))
    if retention is not None and retention != wanted.retention_ms:
        remedy = "left as it is (operators may tune it on the topic)"
        found("retention.ms", retention, wanted.retention_ms, wanted.retention_setting, remedy,
              fatal=False)  # fmt: skip
    return problems


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the service's topics if missing, then check every one against the settings.

    Why refuse a commands topic of another size: the partition count decides which partition
    owns a user. Changing it under a running service would let two partitions own one user;
    see the resize procedure in docs/operations.md instead. Why check existing topics: a topic
    created by hand (or by an older version) with one replica or compaction would lose
    commands without anyone noticing. Returns the names of the topics it created.
    """
    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(**_common(settings))
    try:
        await _bounded(admin.start(), settings, "connect")
        created = await _create_topics(admin, specs, settings)
        described = await _describe_topics(admin, [spec.name for spec in specs], settings)
    finally:
        await admin.close()
    for name in created:
        log.info("topic created", topic=name, partitions=settings.partitions)
    problems = [p for spec in specs for p in topic_problems(described[spec.name], spec)]
    for problem in problems:
        if not problem.fatal:
            log.warning("topic differs from the settings", problem=str(problem))
    fatal = [str(problem) for problem in problems if problem.fatal]
    if fatal:
        raise ConfigError("; ".join(fatal))
    return created


async def _bounded(step: Awaitable[T], settings: Settings, what: str) -> T:
    """One network step, bounded by WALLET_KAFKA_TIMEOUT_MS; an unreachable or silent broker
    is a BrokerUnavailableError (one line from `wallet topics`, not a traceback)."""
    try:
        return await asyncio.wait_for(step, settings.kafka_timeout_ms / 1000)
    except TimeoutError:
        raise BrokerUnavailableError(
            f"the broker did not answer in time ({what})", timeout_ms=settings.kafka_timeout_ms
        ) from None
    except KafkaConnectionError as exc:
        raise BrokerUnavailableError(
            f"the broker could not be reached ({what})", error=str(exc)
        ) from None


async def _create_topics(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], settings: Settings
) -> list[str]:
    """Create the topics that do not exist; return their names."""
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in specs
    ]
    request = admin.create_topics(new, timeout_ms=settings.kafka_timeout_ms)
    response = await _bounded(request, settings, "create topics")
    created, failed = [], []
    for topic, code, *message in response.topic_errors:  # the message from version 1 on
        if code == 0:
            created.append(topic)
        elif code == _INVALID_REPLICATION_FACTOR:
            raise ConfigError(
                f"the brokers cannot hold {settings.topic_replication_factor} replicas of topic "
                f"{topic!r}: lower WALLET_TOPIC_REPLICATION_FACTOR to at most the number of "
                "brokers",
                broker_says=message[0] if message else None,
            )
        elif code != _TOPIC_EXISTS:
            failed.append((topic, code, *message))
    if failed:
        raise ConfigError("topics could not be created", failed=failed)
    return created


async def _describe_topics(
    admin: AIOKafkaAdminClient, names: list[str], settings: Settings
) -> dict[str, TopicState]:
    """Each topic's partitions, replica count and configs, as the broker reports them."""
    topics = await _bounded(_topic_metadata(admin, names), settings, "describe topics")
    failed = [(t["topic"], t["error_code"]) for t in topics if t["error_code"]]
    if failed:
        raise ConfigError("the broker could not describe the topics", failed=failed)
    configs = await _topic_configs(admin, names, settings)
    return {
        t["topic"]: TopicState(
            name=t["topic"],
            partitions=len(t["partitions"]),
            # Distinct brokers: Tansu lists its one broker once per replica asked for.
            replicas=min(len(set(p["replicas"])) for p in t["partitions"]),
            configs=configs.get(t["topic"], {}),
        )
        for t in topics
    }


async def _topic_metadata(admin: AIOKafkaAdminClient, names: list[str]) -> list[dict[str, Any]]:
    """The topics' metadata, once every topic has a leader for each partition (or an error
    that waiting will not cure).

    Why wait: Kafka answers CreateTopics once the controller has the topic, before every
    broker's metadata shows it with leaders; a client started right after would find no such
    topic. The caller bounds the wait."""
    while True:
        topics: list[dict[str, Any]] = await admin.describe_topics(names)
        if not any(_metadata_pending(t) for t in topics):
            return topics
        await asyncio.sleep(_METADATA_POLL_S)


def _metadata_pending(topic: dict[str, Any]) -> bool:
    code = topic["error_code"]
    partitions = topic["partitions"] or []
    leaderless = not partitions or any(p.get("leader", -1) < 0 for p in partitions)
    return code in _METADATA_PENDING or (code == 0 and leaderless)


async def _topic_configs(
    admin: AIOKafkaAdminClient, names: list[str], settings: Settings
) -> dict[str, dict[str, str]]:
    """Each topic's configs. A broker that cannot describe them (an old or partial
    Kafka-protocol broker) costs one warning line: only partitions and replicas are checked."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    try:
        request = admin.describe_configs(resources)
        responses = await _bounded(request, settings, "describe topic configs")
    except (IncompatibleBrokerVersion, UnsupportedVersionError) as exc:
        log.warning("the broker cannot describe topic configs: they are not checked",
                    error=repr(exc))  # fmt: skip
        return {}
    configs: dict[str, dict[str, str]] = {}
    failed: list[tuple[str, int, str]] = []
    for response in responses:
        for resource in response.to_object()["resources"]:
            name, code = resource["resource_name"], resource["error_code"]
            if code:
                failed.append((name, code, resource["error_message"]))
            else:
                entries = resource["config_entries"]
                configs[name] = {e["config_names"]: e["config_value"] for e in entries}
    if failed:
        log.warning("the broker could not describe some topic configs: they are not checked",
                    failed=failed)  # fmt: skip
    return configs


async def topic_partitions(settings: Settings, names: list[str]) -> dict[str, list[int]]:
    """Each named topic's partition ids, asked of the broker (a consumer's cached metadata
    knows only the topics it has asked about; on Kafka, none until it subscribes)."""
    admin = AIOKafkaAdminClient(**_common(settings))
    try:
        await _bounded(admin.start(), settings, "connect")
        described = await _bounded(admin.describe_topics(names), settings, "describe topics")
    finally:
        await admin.close()
    return {
        t["topic"]: sorted(p["partition"] for p in t.get("partitions") or ()) for t in described
    }


async def wait_for_topics(settings: Settings, names: list[str]) -> None:
    """Until every named topic has a leader for each partition (topics created by other
    means than ensure_topics, which waits by itself)."""
    admin = AIOKafkaAdminClient(**_common(settings))
    try:
        await _bounded(admin.start(), settings, "connect")
        await _bounded(_topic_metadata(admin, names), settings, "wait for topic leaders")
    finally:
        await admin.close()
