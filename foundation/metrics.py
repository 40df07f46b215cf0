"""Prometheus metric definitions of every role (the registry is prometheus_client's default,
one per process). Served by wallet.metrics_server.

Labels are bounded sets only (command types, outcomes, error codes, partitions, route
templates): never a user id or a raw path, so a hostile client cannot grow the registry.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double a scrape's size for us
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class PartitionGauge:
    """A per-partition gauge set as a whole: partitions no longer reported disappear from it
    (a revoked partition must not show its last lag forever)."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._partitions: set[int] = set()

    def set_all(self, values: Mapping[int, float]) -> None:
        for gone in self._partitions - values.keys():
            self._gauge.remove(str(gone))
        for partition, value in values.items():
            self._gauge.labels(str(partition)).set(value)
        self._partitions = set(values)


COMMANDS = Counter(
    "wallet_commands",
    "Commands processed, by type (unknown for a record that is not a command) and outcome "
    "(accepted, rejected, duplicate, dead_lettered); code is the error code",
    ["type", "outcome", "code"],
)
BATCH_SIZE = Histogram(
    "wallet_batch_size_records",
    "Records in one partition's committed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
COMMIT_SECONDS = Histogram(
    "wallet_batch_commit_seconds",
    "One step's transaction: lookups, planning and the commit of its partitions' batches",
    buckets=_LATENCY_BUCKETS_S,
)
STAGE_SECONDS = Histogram(
    "wallet_step_stage_seconds",
    "Time in each stage of the write path: admit (decode and route a step's records), lookup "
    "(idempotency records and balances), plan, write (the batch transaction and its commit), "
    "publish (one relay round: send, acknowledgements, watermark)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, *_LATENCY_BUCKETS_S),
)
STAGES = ("admit", "lookup", "plan", "write", "publish")
STAGE = {name: STAGE_SECONDS.labels(name) for name in STAGES}
LATENCY_SECONDS = Histogram(
    "wallet_command_latency_seconds",
    "From a command's sent_at (the producer's clock) to the commit of its batch",
    buckets=_LATENCY_BUCKETS_S,
)
BATCH_FAILURES = Counter(
    "wallet_batch_failures", "Step transactions that failed and are retried from the stored offset"
)
CONSUMER_LAG = PartitionGauge(
    Gauge(
        "wallet_consumer_lag_records",
        "Records of the commands topic not yet committed, per partition this process owns",
        ["partition"],
    )
)
PARTITION_FAILURES = PartitionGauge(
    Gauge(
        "wallet_partition_failures_in_a_row",
        "Batches of a partition this process owns that failed in a row (0 once one commits); "
        "at WALLET_STALL_FAILURES the partition counts as stalled",
        ["partition"],
    )
)
PARTITIONS_OWNED = Gauge("wallet_partitions_owned", "Partitions this processor owns")
REBALANCES = Counter(
    "wallet_rebalances", "Partitions assigned to or revoked from this processor", ["event"]
)
OUTBOX_BACKLOG = Gauge(
    "wallet_outbox_backlog_messages",
    "Committed replies, events and dead letters this processor has not published yet",
)
DEAD_LETTERS = Counter(
    "wallet_dead_letters", "Records sent to the dead-letter topic, by reason", ["code"]
)
EXPIRY_SWEEP_COMMANDS = Counter(
    "wallet_expiry_sweep_commands", "expire commands the expiry sweep published"
)
ALERTS = Counter(
    "wallet_alerts", "Alerts monitors raised (published to the alerts topic), by kind", ["kind"]
)
TRANSFER_STEPS_RESENT = Counter(
    "wallet_transfer_steps_resent",
    "transfer steps the transfer sweep published again (lost with a broker's log, or late)",
)
PROJECTED_ENTRIES = Counter("wallet_projected_entries", "Ledger entries the projector applied")
PROJECTOR_LAG_SECONDS = PartitionGauge(
    Gauge(
        "wallet_projector_lag_seconds",
        "Age of the oldest ledger entry not yet projected, per partition (0 when caught up)",
        ["partition"],
    )
)
PROJECTOR_FAILURES = PartitionGauge(
    Gauge(
        "wallet_projector_failures_in_a_row",
        "Projection steps of a partition that failed in a row (absent once one succeeds); at "
        "WALLET_STALL_FAILURES the partition's projection counts as stalled",
        ["partition"],
    )
)
HTTP_REQUESTS = Counter(
    "wallet_http_requests",
    "HTTP requests answered, by route template",
    ["method", "route", "status"],
)
READS_AFTER = Counter(
    "wallet_reads_after",
    "Balance reads ?after= a reply's position, by what answered them: the cache or the "
    "projection once it had reached the position (at once, or after waiting), or the ledger "
    "when WALLET_API_READ_WAIT_MS ran out",
    ["answered_by"],
)
HTTP_SECONDS = Histogram(
    "wallet_http_request_seconds",
    "HTTP request durations, by route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS_S,
)
