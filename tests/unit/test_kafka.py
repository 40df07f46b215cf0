"""Kafka client options: TLS and SASL settings reach every client aiokafka builds; topics are
created as the settings want them, and existing ones are checked against the settings."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IncompatibleBrokerVersion

from foundation.errors import ConfigError
from foundation.settings import DAY_MS, Settings, load_settings
from messaging import kafka
from messaging.kafka import (
    TopicProblem,
    TopicSpec,
    TopicState,
    ensure_topics,
    make_consumer,
    make_producer,
    security_options,
    topic_problems,
    topic_specs,
)


def _settings(**changes: object) -> Settings:
    base = {"database_url": "postgresql://h/db", "kafka_bootstrap": "broker:9093"}
    return load_settings(_env_file=None, **(base | changes))


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


class TestSecurityOptions:
    def test_plaintext_by_default(self) -> None:
        """Without settings, clients speak plaintext and carry no credentials."""
        assert security_options(_settings()) == {"security_protocol": "PLAINTEXT"}

    def test_sasl_ssl_with_scram_and_a_private_ca(self, ca_file: Path) -> None:
        """SASL_SSL gives a verifying TLS context over our CA and the SCRAM credentials."""
        options = security_options(_settings(
            kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="wallet", kafka_sasl_password="s3cret", kafka_ssl_cafile=ca_file,
        ))  # fmt: skip
        context = options.pop("ssl_context")
        assert options == {
            "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": "wallet", "sasl_plain_password": "s3cret",
        }  # fmt: skip
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert len(context.get_ca_certs()) == 1

    async def test_every_client_accepts_them(self, ca_file: Path) -> None:
        """Producer, consumer and admin client are built with the options (not started)."""
        settings = _settings(
            kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="wallet", kafka_sasl_password="pw", kafka_ssl_cafile=ca_file,
        )  # fmt: skip
        producer = make_producer(settings)
        consumer = make_consumer(settings, group_id=None)
        admin = AIOKafkaAdminClient(bootstrap_servers="broker:9093", **security_options(settings))
        assert isinstance(producer, AIOKafkaProducer) and isinstance(consumer, AIOKafkaConsumer)
        for client in (producer.client, consumer._client, admin._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "PLAIN"
            assert client._ssl_context is not None
        await consumer.stop()
        await producer.stop()

    def test_password_is_never_in_the_settings_repr(self) -> None:
        """The SASL password is a secret string: printing the settings does not show it."""
        settings = _settings(kafka_security_protocol="SASL_PLAINTEXT",
                             kafka_sasl_username="u", kafka_sasl_password="s3cret")  # fmt: skip
        assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


class TestSecurityValidation:
    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"kafka_security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
            ({"kafka_ssl_cafile": "/ca.pem"}, "need KAFKA_SECURITY_PROTOCOL=SSL"),
            ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "go together"),
            ({"kafka_sasl_mechanism": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ],
    )
    def test_incomplete_settings_are_refused_at_start(
        self, changes: dict[str, object], message: str
    ) -> None:
        """A half-configured security setting is a ConfigError naming what is missing."""
        with pytest.raises(ConfigError, match=message):
            _settings(**changes)


def _spec(role: str = "commands", **settings: object) -> TopicSpec:
    """The spec of one topic ("commands", "replies", "events", "dlq" or "alerts") under these
    settings."""
    specs = topic_specs(_settings(**settings))
    return specs[["commands", "replies", "events", "dlq", "alerts"].index(role)]


def _as_wanted(spec: TopicSpec, **changes: object) -> TopicState:
    """A topic exactly as `spec` wants it (as Kafka reports it: every config), then changed."""
    configs = {**spec.configs, "segment.ms": "604800000"}
    state = {"name": spec.name, "partitions": spec.partitions,
             "replicas": spec.replication_factor, "configs": configs}  # fmt: skip
    for key, value in changes.items():
        if key in ("partitions", "replicas"):
            state[key] = value
        else:
            configs[key.replace("_", ".")] = str(value)
    return TopicState(**state)  # type: ignore[arg-type]


def _fatal(problems: list[TopicProblem]) -> list[str]:
    return [str(p) for p in problems if p.fatal]


class TestTopicCreation:
    def test_each_topic_gets_its_role_retention_and_the_delete_policy(self) -> None:
        """The five topics are created with their own retention, the min ISR setting and
        cleanup.policy=delete; only the commands topic is marked as such."""
        specs = topic_specs(_settings(topic_replication_factor=3, topic_min_insync_replicas=2,
                                      events_retention_ms=-1))  # fmt: skip
        names = ["wallet.commands", "wallet.replies", "wallet.events", "wallet.commands.dlq",
                 "wallet.alerts"]  # fmt: skip
        assert [s.name for s in specs] == names
        retentions = [str(7 * DAY_MS), str(DAY_MS), "-1", str(90 * DAY_MS), str(30 * DAY_MS)]
        assert [s.configs["retention.ms"] for s in specs] == retentions
        assert {s.configs["cleanup.policy"] for s in specs} == {"delete"}
        assert {s.configs["min.insync.replicas"] for s in specs} == {"2"}
        assert {s.replication_factor for s in specs} == {3}
        assert [s.commands for s in specs] == [True, False, False, False, False]

    def test_a_topic_as_wanted_has_no_problem(self) -> None:
        """A topic with the wanted partitions, replicas and configs is not reported."""
        for role in ("commands", "replies", "events", "dlq", "alerts"):
            spec = _spec(role, topic_replication_factor=3, topic_min_insync_replicas=2)
            assert topic_problems(_as_wanted(spec), spec) == []


class TestPartitionCount:
    def test_another_count_on_the_commands_topic_is_fatal(self) -> None:
        """The commands topic's partition count decides who owns a user: another is fatal."""
        spec = _spec()
        (problem,) = _fatal(topic_problems(_as_wanted(spec, partitions=6), spec))
        assert "partition count 6" in problem and "want 12 (WALLET_PARTITIONS)" in problem

    def test_another_count_elsewhere_is_not_checked(self) -> None:
        """Replies and events are not partitioned by ownership: their count is not checked."""
        spec = _spec("events")
        assert topic_problems(_as_wanted(spec, partitions=3), spec) == []


class TestReplication:
    def test_fewer_replicas_than_wanted_is_fatal(self) -> None:
        """A topic with one replica when the settings want three is fatal, naming the topic,
        both numbers and the setting."""
        spec = _spec("replies", topic_replication_factor=3, topic_min_insync_replicas=2)
        (problem,) = _fatal(topic_problems(_as_wanted(spec, replicas=1), spec))
        assert problem.startswith("topic 'wallet.replies' has replication factor 1")
        assert "want 3 (WALLET_TOPIC_REPLICATION_FACTOR)" in problem

    def test_a_lower_min_insync_replicas_is_fatal(self) -> None:
        """min.insync.replicas 1 on a topic when the settings want 2 is fatal."""
        spec = _spec("events", topic_replication_factor=3, topic_min_insync_replicas=2)
        (problem,) = _fatal(topic_problems(_as_wanted(spec, min_insync_replicas=1), spec))
        assert "min.insync.replicas 1" in problem
        assert "want 2 (WALLET_TOPIC_MIN_INSYNC_REPLICAS)" in problem

    def test_more_than_wanted_is_fine(self) -> None:
        """More replicas or in-sync replicas than the settings ask for is not a problem."""
        spec = _spec("dlq", topic_replication_factor=2, topic_min_insync_replicas=1)
        state = _as_wanted(spec, replicas=5, min_insync_replicas=3)
        assert topic_problems(state, spec) == []


class TestCleanupPolicy:
    @pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete,compact"])
    def test_a_compacted_commands_topic_is_fatal(self, policy: str) -> None:
        """Compaction, alone or with deletion, on the commands topic is fatal and says why."""
        spec = _spec()
        (problem,) = _fatal(topic_problems(_as_wanted(spec, cleanup_policy=policy), spec))
        assert f"cleanup.policy {policy}" in problem and "WALLET_COMMANDS_TOPIC" in problem
        assert "still at its offset" in problem

    def test_compaction_elsewhere_is_only_reported(self) -> None:
        """A compacted events topic is reported, not fatal: no offset is checked there."""
        spec = _spec("events")
        (problem,) = topic_problems(_as_wanted(spec, cleanup_policy="compact"), spec)
        assert not problem.fatal and problem.setting == "WALLET_EVENTS_TOPIC"


class TestRetention:
    def test_another_retention_is_only_reported(self) -> None:
        """An operator's retention on a topic is reported with the setting, and left as it is."""
        spec = _spec()
        (problem,) = topic_problems(_as_wanted(spec, retention_ms=1_000), spec)
        assert not problem.fatal
        assert (problem.actual, problem.wanted) == ("1000", str(7 * DAY_MS))
        assert problem.setting == "WALLET_COMMANDS_RETENTION_MS"


class TestUnreportedConfigs:
    def test_configs_the_broker_did_not_report_are_not_checked(self) -> None:
        """With no configs described (a broker that cannot), replicas and partitions are still
        checked and nothing else is."""
        spec = _spec(topic_replication_factor=2)
        state = TopicState(spec.name, partitions=12, replicas=1, configs={})
        (problem,) = topic_problems(state, spec)
        assert problem.what == "replication factor" and problem.fatal


class TestTopicSettings:
    def test_min_insync_replicas_at_most_the_replication_factor(self) -> None:
        """A min ISR above the replication factor would refuse every acks=all write."""
        with pytest.raises(ConfigError, match="WALLET_TOPIC_MIN_INSYNC_REPLICAS must be at most"):
            _settings(topic_replication_factor=2, topic_min_insync_replicas=3)

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"commands_retention_ms": -1}, "WALLET_COMMANDS_RETENTION_MS"),
            ({"events_retention_ms": 0}, "WALLET_EVENTS_RETENTION_MS"),
            ({"dlq_retention_ms": 1_000}, "WALLET_DLQ_RETENTION_MS"),
            ({"topic_replication_factor": 0}, "WALLET_TOPIC_REPLICATION_FACTOR"),
        ],
    )
    def test_out_of_bounds_values_are_refused(
        self, changes: dict[str, object], message: str
    ) -> None:
        """Commands are never kept forever; events and dead letters are kept forever (-1) or at
        least an hour; a topic has at least one replica."""
        with pytest.raises(ConfigError, match=message):
            _settings(**changes)

    def test_forever_for_events_and_dead_letters(self) -> None:
        """-1 (keep forever) is accepted for the events and dead-letter topics."""
        settings = _settings(events_retention_ms=-1, dlq_retention_ms=-1)
        assert (settings.events_retention_ms, settings.dlq_retention_ms) == (-1, -1)


class _ConfiglessAdmin:
    """An admin client of a broker that creates topics and lists their one replica, but cannot
    describe topic configs (too old for the request, or answering it with an error)."""

    def __init__(self, answer: Exception | int, **options: object) -> None:
        self.answer = answer

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create_topics(self, new: list[Any], timeout_ms: int) -> SimpleNamespace:
        self.names = [topic.name for topic in new]
        return SimpleNamespace(topic_errors=[(name, 0, None) for name in self.names])

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        partitions = [{"partition": i, "leader": 1, "replicas": [1]} for i in range(12)]
        return [{"topic": n, "error_code": 0, "partitions": partitions} for n in names]

    async def describe_configs(self, resources: list[Any]) -> list[SimpleNamespace]:
        if isinstance(self.answer, Exception):
            raise self.answer
        answer = [{"resource_name": r.name, "error_code": self.answer, "error_message": "no",
                   "config_entries": []} for r in resources]  # fmt: skip
        return [SimpleNamespace(to_object=lambda: {"resources": answer})]


class TestBrokerWithoutTopicConfigs:
    @pytest.mark.parametrize("answer", [IncompatibleBrokerVersion("DescribeConfigs"), 35])
    async def test_one_warning_and_the_rest_is_checked(
        self, monkeypatch: pytest.MonkeyPatch, answer: Exception | int
    ) -> None:
        """A broker that cannot describe topic configs costs one warning line; the topics are
        still created, and their replicas still checked."""
        monkeypatch.setattr(kafka, "AIOKafkaAdminClient",
                            lambda **options: _ConfiglessAdmin(answer, **options))  # fmt: skip
        with structlog.testing.capture_logs() as logs:
            created = await ensure_topics(_settings())
        assert len(created) == 5
        warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1 and "topic configs" in warnings[0]
        with pytest.raises(ConfigError, match="WALLET_TOPIC_REPLICATION_FACTOR"):
            await ensure_topics(_settings(topic_replication_factor=2))
