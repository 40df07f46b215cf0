"""Prometheus metrics of every role, and the small HTTP server that exposes a worker's.

One registry per process (prometheus_client's default): under `wallet up`, which runs every role
in one process, the API's `/metrics` shows them all; `wallet processor` and `wallet projector`
serve theirs, with a `/health` probe, on `WALLET_METRICS_HOST:WALLET_METRICS_PORT`.

Labels are bounded sets only (command types, outcomes, error codes, partitions, route
templates): never a user id or a raw path, so a hostile client cannot grow the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet.errors import ConfigError
from wallet.httpserver import listening_socket, run_server
from wallet.settings import Settings

disable_created_metrics()  # the *_created series only double a scrape's size for us
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
HTTP_SECONDS = Histogram(
    "wallet_http_request_seconds",
    "HTTP request durations, by route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS_S,
)


def health_url(settings: Settings) -> str:
    """Where this machine's role answers /health: the metrics port when set, else the API's.
    A wildcard listen address is reached through loopback."""
    host, port = settings.api_host, settings.api_port
    if settings.metrics_port:
        host, port = settings.metrics_host, settings.metrics_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/health"


def exposition() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware counting and timing requests by route template (`/wallet/{userId}/balance`,
    or `unmatched`), so that the label set stays bounded whatever paths clients send."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started_s = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, recorded)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started_s)


def metrics_app(role: str, health: Callable[[], Mapping[str, Any] | None]) -> Starlette:
    """`/metrics`, and `/health`: 200 with `health()`'s details, 503 when it returns None."""

    async def metrics(_: Request) -> Response:
        return exposition()

    async def healthy(_: Request) -> Response:
        details = health()
        if details is None:
            return JSONResponse({"status": "unhealthy", "role": role}, 503)
        return JSONResponse({"status": "ok", "role": role, **details})

    return Starlette(routes=[Route("/metrics", metrics), Route("/health", healthy)])


async def beside(
    settings: Settings, role: str, health: Callable[[], Mapping[str, Any] | None],
    work: Coroutine[Any, Any, None],
) -> None:  # fmt: skip
    """Run a role's `work` with its metrics server beside it (none when WALLET_METRICS_PORT is
    0). The server stops when the work ends. A port already taken is a ConfigError before the
    work starts: a worker nobody can watch should not run unnoticed."""
    if settings.metrics_port == 0:
        await work
        return
    try:
        sock = listening_socket(settings.metrics_host, settings.metrics_port, "WALLET_METRICS_PORT")
    except ConfigError:
        work.close()  # never started: closed, so Python does not warn it was never awaited
        raise
    done = asyncio.Event()
    server = asyncio.create_task(run_server(metrics_app(role, health), sock, done), name="metrics")
    try:
        await work
    finally:
        done.set()
        await server
