"""Settings from `WALLET_*` environment variables, validated once at start.

When `wallet up` runs the embedded stack it writes `.wallet/stack.env` so that commands started
in another terminal (`wallet send`, `wallet bench`) find the same PostgreSQL and broker.
Real environment variables always win over that file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from foundation.errors import ConfigError
from foundation.topic_names import (
    DEFAULT_ALERTS_TOPIC,
    DEFAULT_COMMANDS_TOPIC,
    DEFAULT_DLQ_TOPIC,
    DEFAULT_EVENTS_TOPIC,
    DEFAULT_REPLIES_TOPIC,
    is_topic_name,
)

STACK_ENV_FILE = Path(".wallet") / "stack.env"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class Settings(BaseSettings):
    """Every knob of the service; each has a unit in its name and a bound."""

    model_config = SettingsConfigDict(
        env_prefix="WALLET_", env_file=STACK_ENV_FILE, extra="ignore", frozen=True
    )

    database_url: str | None = None
    kafka_bootstrap: str | None = None
    commands_topic: str = DEFAULT_COMMANDS_TOPIC
    replies_topic: str = DEFAULT_REPLIES_TOPIC
    events_topic: str = DEFAULT_EVENTS_TOPIC
    dlq_topic: str = DEFAULT_DLQ_TOPIC
    alerts_topic: str = DEFAULT_ALERTS_TOPIC  # monitors' alerts (`wallet monitors`)
    partitions: int = Field(12, ge=1, le=1000)
    consumer_group: str = Field("wallet-processor", min_length=1, max_length=200)
    # Idempotent producers need InitProducerId, which the Tansu broker does not answer.
    producer_idempotence: bool = True
    # The broker `wallet up` and the tests start when WALLET_KAFKA_BOOTSTRAP is unset: Apache
    # Kafka (needs Java 17+ and Maven), Tansu (no Java), or auto: Kafka where it can run.
    embedded_broker: Literal["auto", "kafka", "tansu"] = "auto"
    # Kafka security, passed to every Kafka client the service and the CLI create.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = Field(None, min_length=1, max_length=256)
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # the system's trust store when unset
    kafka_ssl_certfile: Path | None = None  # a client certificate (mutual TLS)
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    # Where replies may go besides the replies topic: comma-separated patterns (`*`, `?`,
    # `[...]`), such as "game-*.replies". Empty: any existing topic. A command whose reply_to
    # matches none is dead-lettered as forbidden_reply_topic.
    reply_topics: str = Field("", max_length=2000)
    batch_size_max: int = Field(2000, ge=1, le=50_000)
    fetch_wait_ms: int = Field(20, ge=0, le=5_000)
    fetch_bytes_max: int = Field(16 * 1024 * 1024, ge=1024 * 1024, le=256 * 1024 * 1024)
    command_bytes_max: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    balance_cache_max: int = Field(200_000, ge=1_000, le=50_000_000)
    outbox_queue_max: int = Field(64, ge=1, le=10_000)
    # How often each processor looks for wallets holding expired lots nobody touches and
    # sends them an `expire` command (processor.expiry_sweep).
    expiry_sweep_interval_ms: int = Field(5_000, ge=100, le=3_600_000)
    # A transfer's next step not taken this long after its record is sent again
    # (processor.transfer_sweep): it was lost with the broker's log, or is very late.
    transfer_resend_ms: int = Field(30_000, ge=1_000, le=3_600_000)
    # Published outbox rows kept per partition (for inspection); older ones are pruned.
    outbox_keep_rows: int = Field(100_000, ge=0, le=100_000_000)
    outbox_prune_interval_ms: int = Field(5_000, ge=10, le=3_600_000)
    db_pool_size_max: int = Field(8, ge=2, le=200)
    db_timeout_ms: int = Field(10_000, ge=100, le=600_000)
    kafka_timeout_ms: int = Field(10_000, ge=100, le=600_000)
    session_timeout_ms: int = Field(10_000, ge=3_000, le=300_000)
    heartbeat_interval_ms: int = Field(1_000, ge=100, le=60_000)
    retry_backoff_max_ms: int = Field(5_000, ge=10, le=300_000)
    # A partition whose batches (or projection steps) failed this many times in a row counts
    # as stalled: /ready answers 503 and `wallet status` shows it in red. Narrowing a failing
    # batch down to its record takes at most log2(batch_size_max) + 3 failures in a row (19 at
    # the largest batch), so the default never calls a narrowing a stall.
    stall_failures: int = Field(20, ge=1, le=10_000)
    # `wallet verify` and `wallet status` report commands waiting in the log longer than this.
    command_wait_max_ms: int = Field(60_000, ge=1_000, le=86_400_000)
    # Fault tests only (processor.crash_points): "POINT:TYPE" makes the processor exit at that
    # point of the write path when a batch holds a record of that type. Never in production.
    crash_at: str | None = Field(
        None, pattern=r"^(before_commit|after_commit|after_publish):[a-z_]+$"
    )

    # The topics as `wallet topics` creates them. Production: replication 3 and min ISR 2, so
    # that a write acknowledged by all in-sync replicas (producers use acks=all) survives the
    # loss of a broker, and the topics stay writable while one broker is down.
    topic_replication_factor: int = Field(1, ge=1, le=10)
    topic_min_insync_replicas: int = Field(1, ge=1, le=10)
    # Retention per topic, by its role. Commands: a restore re-reads from Kafka every command
    # after the database snapshot, so keep them longer than the backup interval plus the time
    # a restore takes. Bounded: once in the ledger, a command is needed for a restore only.
    commands_retention_ms: int = Field(7 * DAY_MS, ge=HOUR_MS, le=365 * DAY_MS)
    # Replies: read within seconds by whoever waits for them (the API, a game server).
    replies_retention_ms: int = Field(DAY_MS, ge=60_000, le=30 * DAY_MS)
    # Events: what downstream systems read at their own pace; -1 keeps them forever. Older
    # ones can be published again from the ledger (`wallet replay --republish`).
    events_retention_ms: int = Field(365 * DAY_MS, ge=-1, le=3650 * DAY_MS)
    # Dead letters: kept until someone has looked at them; -1 keeps them forever.
    dlq_retention_ms: int = Field(90 * DAY_MS, ge=-1, le=3650 * DAY_MS)
    # Alerts: read by whoever acts on them (fraud, support, parents' notifications).
    alerts_retention_ms: int = Field(30 * DAY_MS, ge=HOUR_MS, le=3650 * DAY_MS)
    # How often a processor reads the monitors again: a monitor added or removed applies to
    # the batches decided after that.
    monitors_reload_ms: int = Field(10_000, ge=100, le=600_000)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    api_reuse_port: bool = False  # let several `wallet api` processes share the port
    api_reply_timeout_ms: int = Field(5_000, ge=10, le=60_000)
    api_body_bytes_max: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    # Connections or requests one API process serves at once; past it, 503 at once instead of
    # an unbounded queue. (Each HTTP/1.1 connection carries one request at a time.)
    api_concurrency_max: int = Field(1024, ge=1, le=100_000)
    # How long a checked API key is trusted without asking PostgreSQL again: a revoked key
    # stops working within this time.
    api_key_cache_ttl_ms: int = Field(5_000, ge=0, le=300_000)
    # Users whose balances each API process caches, kept current by the events topic (0: none;
    # every balance read is then a query). About 300 bytes each.
    api_balance_cache_max: int = Field(100_000, ge=0, le=10_000_000)
    # The cache is used only while the broker answered fetches of every events partition this
    # recently (an idle fetch is answered after WALLET_FETCH_WAIT_MS).
    api_balance_cache_trust_ms: int = Field(2_000, ge=1_000, le=60_000)
    # A balance read `?after=` a reply's position waits at most this long for the cache or the
    # projection to reach it, then reads the ledger.
    api_read_wait_ms: int = Field(1_000, ge=0, le=30_000)

    # `wallet processor` and `wallet projector` serve /metrics and /health here; 0 = off (the
    # API serves /metrics on its own port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535)

    data_dir: Path = Path(".wallet")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("commands_topic", "replies_topic", "events_topic", "dlq_topic",
                     "alerts_topic")  # fmt: skip
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not is_topic_name(value):
            raise ValueError(f"not a valid Kafka topic name: {value!r}")
        return value

    @field_validator("reply_topics")
    @classmethod
    def _reply_topic_patterns(cls, value: str) -> str:
        for pattern in value.split(",") if value.strip() else ():
            if not re.fullmatch(r"[A-Za-z0-9._*?\[\]-]{1,249}", pattern.strip()):
                raise ValueError(f"not a topic name pattern: {pattern.strip()!r}")
        return value

    @property
    def reply_topic_patterns(self) -> tuple[str, ...]:
        """Empty when any reply topic is allowed; else the replies topic and the patterns."""
        if not self.reply_topics.strip():
            return ()
        patterns = (p.strip() for p in self.reply_topics.split(","))
        return (self.replies_topic, *patterns)

    @field_validator("events_retention_ms", "dlq_retention_ms")
    @classmethod
    def _retention_or_forever(cls, value: int) -> int:
        if value != -1 and value < HOUR_MS:
            raise ValueError(f"must be -1 (keep forever) or at least an hour ({HOUR_MS} ms)")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// (TLS options go in the URL)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        topics = [self.commands_topic, self.replies_topic, self.events_topic, self.dlq_topic,
                  self.alerts_topic]  # fmt: skip
        if len(set(topics)) != len(topics):
            raise ValueError("the commands, replies, events, DLQ and alerts topics must all differ")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            # Kafka would accept such a topic, and then refuse every acks=all write to it.
            raise ValueError(
                "WALLET_TOPIC_MIN_INSYNC_REPLICAS must be at most WALLET_TOPIC_REPLICATION_FACTOR"
            )
        self._check_kafka_security()
        return self

    def _check_kafka_security(self) -> None:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        tls_files = [self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile]
        if any(tls_files) and not protocol.endswith("SSL"):
            raise ValueError("KAFKA_SSL_* files need KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")

    def require_services(self) -> tuple[str, str]:
        """Return (database_url, kafka_bootstrap) or explain how to get them."""
        if not self.database_url or not self.kafka_bootstrap:
            raise ConfigError(
                "WALLET_DATABASE_URL and WALLET_KAFKA_BOOTSTRAP must be set "
                "(or run `wallet up` in another terminal to start the embedded stack)"
            )
        return self.database_url, self.kafka_bootstrap


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value becomes one clear ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"WALLET_{'_'.join(str(p) for p in err['loc']).upper() or '?'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
