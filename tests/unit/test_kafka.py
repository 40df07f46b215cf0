"""Kafka client options: TLS and SASL settings reach every client aiokafka builds."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from wallet.errors import ConfigError
from wallet.kafka import make_consumer, make_producer, security_options
from wallet.settings import Settings, load_settings


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
