"""`wallet status`: one screen for an operator, read from PostgreSQL (the truth: owners,
positions, what is unpublished) and the broker (where each log ends, the dead-letter count).

Gathering is I/O; `render` is a pure function of the gathered report, so what the screen says
is tested without a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from foundation.settings import Settings
from messaging.kafka import make_consumer, topic_partitions
from storage.db import Conn, connection
from storage.projection_store import LIVE, lag_by_partition
from storage.stalls import Stall, stalls

RECENT_ROWS_MAX = 5

_PARTITIONS_SQL = """
SELECT ps.partition, ps.owner, ps.owner_epoch, ps.generation, ps.next_offset, ps.updated_at,
       ps.failures_in_a_row AS failures, pc.failures_in_a_row AS projector_failures,
       (SELECT count(*) FROM unpublished_messages u
         WHERE u.topic = ps.topic AND u.partition = ps.partition) AS unpublished,
       pc.position AS projected_entry
  FROM partition_state ps
  LEFT JOIN projection_checkpoints pc ON pc.projection = $2 AND pc.partition = ps.partition
 WHERE ps.topic = $1
 ORDER BY ps.partition
"""


# Transfers debited in the last day and not yet credited nor refunded (each step follows the
# one before within milliseconds; `wallet verify` looks at all of them, however old).
_TRANSFERS_SQL = """
SELECT count(*) AS n, extract(epoch FROM now() - min(d.processed_at))::float8 AS oldest_s
  FROM processed_commands d
 WHERE d.type = 'transfer' AND d.status = 'accepted'
   AND d.processed_at > now() - interval '1 day'
   AND NOT EXISTS (SELECT 1 FROM processed_commands s
                    WHERE s.transfer_id = d.transfer_id AND s.status = 'accepted'
                      AND s.type IN ('transfer_in', 'transfer_refund'))
"""


# The purchases of the last hour (their main records, through their partial index): a
# purchase is booked whole or refused in one batch, so none is ever in flight.
_PURCHASES_SQL = """
SELECT count(*) FILTER (WHERE status = 'accepted') AS accepted,
       count(*) FILTER (WHERE status = 'rejected') AS refused,
       count(*) FILTER (WHERE status = 'accepted' AND type = 'conversion') AS conversions
  FROM processed_commands
 WHERE sku IS NOT NULL AND idempotency_key NOT LIKE 'purchase-part:%'
   AND processed_at > now() - interval '1 hour'
"""


# The alerts monitors raised in the last hour, by kind (through their partial index).
_ALERTS_SQL = """
SELECT a->>1 AS kind, count(*) AS n
  FROM processed_commands CROSS JOIN jsonb_array_elements(alerts) AS a
 WHERE alerts IS NOT NULL AND processed_at > now() - interval '1 hour'
 GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    owner: str | None
    epoch: int
    generation: int
    next_offset: int  # the next command offset to process (stored with the ledger)
    log_start: int | None  # the commands log's first offset still held (retention moves it)
    log_end: int | None  # the commands log's end on the broker; None when it did not answer
    unpublished: int  # committed replies, events and dead letters not yet published
    projected_entry: int | None  # the projector's checkpoint (a ledger entry id)
    projector_lag_s: float
    updated_at: datetime
    failures: int  # the processor's batches failed in a row (0 when the last one committed)
    projector_failures: int  # the projector's steps failed in a row
    waiting_s: float | None  # age of the oldest command not processed yet; None when none

    @classmethod
    def of(cls, row: Any, broker: _BrokerView, projector_lag_s: float) -> PartitionStatus:
        """One row of _PARTITIONS_SQL with what the broker and the projector add to it."""
        start, end = broker.bounds.get(row["partition"], (None, None))
        return cls(
            partition=row["partition"], owner=row["owner"], epoch=row["owner_epoch"],
            generation=row["generation"], next_offset=row["next_offset"],
            log_start=start, log_end=end, unpublished=row["unpublished"],
            projected_entry=row["projected_entry"], projector_lag_s=round(projector_lag_s, 3),
            updated_at=row["updated_at"], failures=row["failures"],
            projector_failures=row["projector_failures"] or 0,
            waiting_s=broker.waiting_s.get(row["partition"]),
        )  # fmt: skip

    @property
    def lag(self) -> int | None:
        """Negative when the log ends before the stored offset: it was replaced (the
        processor resets such a partition, see the README), never a lag to hide."""
        return None if self.log_end is None else self.log_end - self.next_offset


@dataclass(frozen=True, slots=True)
class StatusReport:
    commands_topic: str
    partitions: list[PartitionStatus]
    dead_letters: int | None  # records in the dead-letter topic; None when the broker is away
    broker_error: str | None
    stalls: list[Stall]
    command_wait_max_s: float
    recent_resets: list[dict[str, Any]] = field(default_factory=list)
    recent_dead_letters: list[dict[str, Any]] = field(default_factory=list)
    transfers_in_flight: int = 0  # debited in the last day, not yet credited nor refunded
    transfer_oldest_s: float | None = None  # how long the oldest of them has been in flight
    # The last hour's purchases: accepted, refused, and the conversions among those accepted.
    purchases: dict[str, int] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=dict)  # the last hour's, by monitor kind

    def to_json(self) -> bytes:
        data = asdict(self)
        for row, status in zip(data["partitions"], self.partitions, strict=True):
            row["lag"] = status.lag
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    def waiting_too_long(self) -> list[str]:
        """Partitions whose oldest unprocessed command waited past the bound."""
        ages = {p.partition: p.waiting_s for p in self.partitions if p.waiting_s is not None}
        return overdue(ages, self.command_wait_max_s)


def overdue(ages_s: dict[int, float], bound_s: float) -> list[str]:
    """One line per partition whose oldest unprocessed command has waited past `bound_s`."""
    return [f"partition {p}: a command has waited {age_s:.0f} s"
            for p, age_s in sorted(ages_s.items()) if age_s > bound_s]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _BrokerView:
    bounds: dict[int, tuple[int, int]]  # partition -> the commands log's (start, end)
    dead_letters: int  # records in the dead-letter topic
    waiting_s: dict[int, float]  # partition -> age of its oldest unprocessed command


async def gather(settings: Settings) -> StatusReport:
    async with connection(settings) as conn:
        rows = await conn.fetch(_PARTITIONS_SQL, settings.commands_topic, LIVE.checkpoint)
        projector_lags = await lag_by_partition(conn)
        resets = await _recent_resets(conn, settings.commands_topic)
        dead = await _recent_dead_letters(conn, settings.commands_topic)
        stalled = await stalls(conn, settings.commands_topic, settings.stall_failures)
        in_flight = await conn.fetchrow(_TRANSFERS_SQL)
        bought = await conn.fetchrow(_PURCHASES_SQL)
        alerted = {r["kind"]: r["n"] for r in await conn.fetch(_ALERTS_SQL)}
    assert in_flight is not None and bought is not None  # aggregates: always one row
    broker_error = None
    try:
        broker = await _broker_view(settings, {r["partition"]: r["next_offset"] for r in rows})
    except (KafkaError, TimeoutError) as exc:
        broker, broker_error = _BrokerView({}, 0, {}), repr(exc)
    partitions = [
        PartitionStatus.of(r, broker, projector_lags.get(r["partition"], 0.0)) for r in rows
    ]
    return StatusReport(
        settings.commands_topic, partitions, None if broker_error else broker.dead_letters,
        broker_error, stalled, settings.command_wait_max_ms / 1000, resets, dead,
        in_flight["n"], in_flight["oldest_s"], dict(bought), alerted,
    )  # fmt: skip


async def _recent_resets(conn: Conn, topic: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT partition, old_generation AS old_gen, old_next_offset AS old_next,"
        " log_end_offset AS log_end, reason, detected_at AS at"
        " FROM partition_resets WHERE topic = $1 ORDER BY reset_id DESC LIMIT $2",
        topic,
        RECENT_ROWS_MAX,
    )
    return [dict(r) for r in rows]


async def _recent_dead_letters(conn: Conn, topic: str) -> list[dict[str, Any]]:
    """The latest dead letters still in the outbox (published rows are kept for a while)."""
    rows = await conn.fetch(
        "SELECT partition, source_offset, dlq_value, created_at FROM outbox"
        " WHERE topic = $1 AND dlq_value IS NOT NULL ORDER BY created_at DESC LIMIT $2",
        topic,
        RECENT_ROWS_MAX,
    )
    recent = []
    for r in rows:
        letter = orjson.loads(r["dlq_value"])
        recent.append({"partition": r["partition"], "offset": r["source_offset"],
                       "code": letter.get("code"), "reason": letter.get("reason"),
                       "at": r["created_at"]})  # fmt: skip
    return recent


async def _broker_view(settings: Settings, next_offsets: dict[int, int]) -> _BrokerView:
    """The commands log's bounds, the dead-letter count, and how long commands have waited."""
    timeout_s = settings.kafka_timeout_ms / 1000
    ids = await topic_partitions(settings, [settings.commands_topic, settings.dlq_topic])
    commands = [TopicPartition(settings.commands_topic, p) for p in ids[settings.commands_topic]]
    dlq = [TopicPartition(settings.dlq_topic, p) for p in ids[settings.dlq_topic]]
    consumer = make_consumer(settings)
    await asyncio.wait_for(consumer.start(), timeout_s)
    try:
        starts = await asyncio.wait_for(consumer.beginning_offsets(commands + dlq), timeout_s)
        ends = await _log_ends(consumer, starts, timeout_s)
        waiting = {
            tp: next_offsets[tp.partition]
            for tp in commands
            if tp.partition in next_offsets and ends[tp] > next_offsets[tp.partition]
        }
        waiting_s = await _waiting_ages(consumer, waiting, timeout_s)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.stop(), timeout_s)
    bounds = {tp.partition: (starts[tp], ends[tp]) for tp in commands}
    return _BrokerView(bounds, sum(ends[tp] - starts[tp] for tp in dlq), waiting_s)


async def waiting_ages(settings: Settings, next_offsets: dict[int, int]) -> dict[int, float]:
    """Per partition of the commands topic, the age of its oldest unprocessed command: one
    consumer, no admin client, everything within one WALLET_KAFKA_TIMEOUT_MS (for `wallet
    verify`, which must answer even while a broker of the cluster is down)."""
    timeout_s = settings.kafka_timeout_ms / 1000
    consumer = make_consumer(settings)
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            tps = [TopicPartition(settings.commands_topic, p) for p in next_offsets]
            ends = await consumer.end_offsets(tps)
            behind = {tp: next_offsets[tp.partition] for tp in tps
                      if ends[tp] > next_offsets[tp.partition]}  # fmt: skip
            return await _waiting_ages(consumer, behind, timeout_s)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.stop(), timeout_s)


async def _waiting_ages(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int], timeout_s: float
) -> dict[int, float]:
    """For each partition, the age of the first record at or after its position (the oldest
    command not processed yet), from the record's timestamp."""
    consumer.assign(list(positions))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    ages: dict[int, float] = {}
    deadline_s = time.monotonic() + timeout_s
    while len(ages) < len(positions) and time.monotonic() < deadline_s:
        fetched = await consumer.getmany(timeout_ms=200, max_records=len(positions))
        for tp, records in fetched.items():
            if records and tp.partition not in ages:
                ages[tp.partition] = max(0.0, time.time() - records[0].timestamp / 1000)
                consumer.pause(tp)
    return ages


async def _log_ends(
    consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int], timeout_s: float
) -> dict[TopicPartition, int]:
    """Where each log ends, from a fetch's high watermark.

    Why not ListOffsets alone: the embedded broker answers "latest" with the last record
    batch's base offset + 1, short of the end whenever that batch held several records (pinned
    in tests/integration/test_broker.py). So ListOffsets is only where to fetch from; the
    fetch's high watermark is the end on Kafka and Tansu alike.
    """
    tps = list(starts)
    listed = await asyncio.wait_for(consumer.end_offsets(tps), timeout_s)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(listed[tp] - 1, starts[tp]))
    deadline_s = time.monotonic() + timeout_s
    while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline_s:
        await consumer.getmany(timeout_ms=200, max_records=1)
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in tps}


def render(report: StatusReport) -> RenderableType:
    """The operator's screen: partitions, then totals, then what went wrong lately."""
    table = Table(title=f"Partitions of {report.commands_topic}", title_justify="left")
    # Short headers: the whole table fits 110 columns with a hostname:pid:id owner.
    for column in ("part", "owner", "epoch", "gen", "next", "log start", "log end", "lag",
                   "wait s", "fails", "unpub", "projected", "proj lag s"):  # fmt: skip
        table.add_column(column, justify="left" if column == "owner" else "right")
    for p in report.partitions:
        table.add_row(
            str(p.partition), p.owner or "-", str(p.epoch), str(p.generation),
            str(p.next_offset), _or_dash(p.log_start), _or_dash(p.log_end), _lag_cell(p.lag),
            _wait_cell(p.waiting_s, report.command_wait_max_s), _fails_cell(p),
            str(p.unpublished), _or_dash(p.projected_entry), f"{p.projector_lag_s:.3f}",
        )  # fmt: skip
    lags = [max(0, p.lag) for p in report.partitions if p.lag is not None]
    summary = Table.grid(padding=(0, 2))
    summary.add_row("owners", str(len({p.owner for p in report.partitions if p.owner})))
    summary.add_row("consumer lag", str(sum(lags)) if lags else "-")
    summary.add_row("outbox backlog", str(sum(p.unpublished for p in report.partitions)))
    projector_lag_s = max((p.projector_lag_s for p in report.partitions), default=0.0)
    summary.add_row("projector lag", f"{projector_lag_s:.3f} s")
    summary.add_row("dead letters", _or_dash(report.dead_letters))
    summary.add_row("transfers in flight", _in_flight_cell(report))
    bought = report.purchases
    summary.add_row("purchases (last hour)", f"{bought.get('accepted', 0)} accepted "
                    f"({bought.get('conversions', 0)} conversions), "
                    f"{bought.get('refused', 0)} refused")  # fmt: skip
    alerted = ", ".join(f"{n} {kind}" for kind, n in sorted(report.alerts.items()))
    summary.add_row("alerts (last hour)", alerted or "0")
    if report.broker_error:
        summary.add_row("broker", f"[red]did not answer: {report.broker_error}[/red]")
    parts: list[RenderableType] = [table, summary]
    for stall in report.stalls:
        parts.append(f"[red]STALLED: {escape(stall.describe())}[/red]")
    for waiting in report.waiting_too_long():
        parts.append(f"[red]WAITING: {waiting}[/red]")
    parts.append(_recent("Recent partition resets", report.recent_resets))
    parts.append(_recent("Recent dead letters", report.recent_dead_letters))
    return Group(*parts)


def _recent(title: str, rows: list[dict[str, Any]]) -> RenderableType:
    if not rows:
        return f"{title}: none"
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(value) for value in row.values()))
    return table


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _wait_cell(waiting_s: float | None, bound_s: float) -> str:
    if waiting_s is None:
        return "-"
    return f"[red]{waiting_s:.0f}[/red]" if waiting_s > bound_s else f"{waiting_s:.0f}"


def _fails_cell(p: PartitionStatus) -> str:
    """The processor's and the projector's failures in a row, red while any goes on."""
    if not p.failures and not p.projector_failures:
        return "0"
    return f"[red]{p.failures}/{p.projector_failures}[/red]"


def _lag_cell(lag: int | None) -> str:
    return f"[red]{lag} (log replaced?)[/red]" if lag is not None and lag < 0 else _or_dash(lag)


def _in_flight_cell(report: StatusReport) -> str:
    """How many transfers are between their steps; red when one has waited past the bound
    for a command (a partition of one of its users is not keeping up)."""
    oldest_s = report.transfer_oldest_s
    if not report.transfers_in_flight or oldest_s is None:
        return "0"
    cell = f"{report.transfers_in_flight} (oldest {oldest_s:.1f} s)"
    return f"[red]{cell}[/red]" if oldest_s > report.command_wait_max_s else cell


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
