"""The `wallet` command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from foundation import collector
from foundation.errors import WalletError
from foundation.logs import configure_logging
from foundation.settings import Settings, load_settings

if TYPE_CHECKING:  # imported lazily below: every command pays for what it imports
    import asyncpg

T = TypeVar("T")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except WalletError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Awaitable[T]) -> T:
    """Run on uvloop (measurably faster for every role here) with a clear error on failure."""
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    except WalletError as exc:
        raise click.ClickException(str(exc)) from None


def _on_db(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` on one short connection: an operator command's way to the database."""
    from storage.db import connection

    async def go() -> T:
        async with connection(_settings()) as conn:
            return await work(conn)

    return _run(go())


def _run_role(role: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """Run a long-lived role (processor, projector, API) until SIGINT or SIGTERM."""
    settings = _settings()
    collector.tune_for_service()

    async def go() -> None:
        await role(settings, _stop_event())

    _run(go())


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@click.group()
def main() -> None:
    """Dino Wallet: wallet commands over Kafka into a double-entry ledger in PostgreSQL."""


@main.command()
@click.option(
    "--broker",
    type=click.Choice(["auto", "kafka", "tansu"]),
    default=None,
    help="Embedded broker when WALLET_KAFKA_BOOTSTRAP is unset: Apache Kafka (Java 17+ and "
    "Maven), Tansu (no Java), or auto [default: WALLET_EMBEDDED_BROKER, else auto].",
)
def up(broker: str | None) -> None:
    """Run the whole stack on this machine (embedded PostgreSQL and broker when unset)."""
    from wallet.up import run_up

    settings = _settings().model_copy(update={"log_format": "console"})
    if broker is not None:
        settings = settings.model_copy(update={"embedded_broker": broker})
    configure_logging(settings.log_level, "console")
    collector.tune_for_service()
    _run(run_up(settings, _stop_event))


@main.command()
def migrate() -> None:
    """Apply the schema migrations that are missing (idempotent)."""
    from storage.schema_migrations import migrate as apply

    applied = _on_db(apply)
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@main.command()
@click.argument("role")
def grant(role: str) -> None:
    """Grant ROLE (an existing database role) what the service needs and no more: the ledger
    tables insert-only. Run the service as ROLE, migrations as the tables' owner."""
    import asyncpg

    from storage.schema_migrations import grant_service_role

    try:
        _on_db(lambda conn: grant_service_role(conn, role))
    except (ValueError, asyncpg.UndefinedObjectError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{role}: granted")


@main.command()
def topics() -> None:
    """Create the topics if missing (partition count from WALLET_PARTITIONS)."""
    from messaging.kafka import ensure_topics

    created = _run(ensure_topics(_settings()))
    click.echo("created: " + ", ".join(created) if created else "topics exist")


@main.command()
def processor() -> None:
    """Run one processor (a consumer-group member); run one per core to scale out."""
    from wallet.roles import run_processor

    _run_role(run_processor)


def _parts(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[Any]:
    """--cost and --grant values (ASSET:AMOUNT) as a purchase's parts."""
    from pydantic import ValidationError

    from schemas.commands import Part

    parts = []
    for value in values:
        asset, _, amount = value.partition(":")
        try:
            digits = amount.isascii() and amount.isdigit()
            parts.append(Part(asset=asset, amount=int(amount) if digits else -1))
        except ValidationError:
            raise click.BadParameter(f"{value!r} is not ASSET:AMOUNT (1 to 10^15)") from None
    return parts


@main.command()
@click.argument(
    "kind",
    type=click.Choice(
        ["top-up", "bonus", "spend", "expire", "hold", "capture", "release", "reverse",
         "transfer", "purchase"]
    ),
)  # fmt: skip
@click.option("--user", "user_id", required=True, help="User id (also the message key).")
@click.option("--asset", default="GOLD", show_default=True)
@click.option(
    "--amount",
    type=int,
    help="Integer minor units (capture: optional; not for expire, release, reverse).",
)
@click.option(
    "--expires-at", type=click.DateTime(), help="top-up, bonus: when the lot expires (UTC)."
)
@click.option("--hold-id", help="hold: its name (default: its transaction id); capture, release.")
@click.option("--expires-in", "expires_in_s", type=int, help="hold: seconds until it expires.")
@click.option(
    "--transaction", "transaction_id", type=click.UUID, help="reverse: the transaction to undo."
)
@click.option("--reason", help="reverse: why (a store refund, a chargeback...).")
@click.option("--to", "to_user_id", help="transfer: who receives it.")
@click.option(
    "--cost",
    "costs",
    multiple=True,
    callback=_parts,
    metavar="ASSET:AMOUNT",
    help="purchase: what it pays (repeat for each asset; the first is its asset).",
)
@click.option(
    "--grant",
    "grants",
    multiple=True,
    callback=_parts,
    metavar="ASSET:AMOUNT",
    help="purchase: what it gives (repeat; a conversion has one cost).",
)
@click.option("--sku", help="purchase: what is bought.")
@click.option("--key", "idempotency_key", help="Idempotency key (default: a new UUID).")
@click.option("--description")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
def send(
    kind: str,
    user_id: str,
    asset: str,
    amount: int | None,
    expires_at: datetime | None,
    hold_id: str | None,
    expires_in_s: int | None,
    transaction_id: uuid.UUID | None,
    reason: str | None,
    to_user_id: str | None,
    costs: list[Any],
    grants: list[Any],
    sku: str | None,
    idempotency_key: str | None,
    description: str | None,
    timeout_s: float,
) -> None:
    """Publish one command and print its reply (`expire` books out a wallet's expired lots
    and gives back its lapsed holds; a transfer's reply comes once the receiver's side has
    decided: `wallet transfer ID` tells a late one's outcome; a purchase pays each --cost and
    receives each --grant, all or nothing: `wallet purchase ID` shows one)."""
    from pydantic import ValidationError

    from commands.client import WalletClient
    from schemas.commands import CommandType, new_command

    settings = _settings()
    try:
        command = new_command(
            type=CommandType(kind.replace("-", "_")),
            user_id=user_id,
            asset=costs[0].asset if costs else asset,
            amount=amount,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            command_id=uuid.uuid4(),
            sent_at=datetime.now(UTC),
            description=description,
            reply_to=settings.replies_topic,
            expires_at=expires_at.replace(tzinfo=UTC) if expires_at else None,
            hold_id=hold_id,
            expires_in_s=expires_in_s,
            transaction_id=transaction_id,
            reason=reason,
            to_user_id=to_user_id,
            costs=costs or None,
            grants=grants or None,
            sku=sku,
        )
    except ValidationError as exc:
        raise click.ClickException(f"invalid command: {exc}") from None

    async def go() -> Any:
        async with WalletClient(settings) as client:
            return await client.request(command, timeout_s)

    reply = _run(go())
    click.echo(reply.model_dump_json(indent=2))
    if reply.status == "rejected":
        sys.exit(1)


@main.command()
@click.argument("name", type=click.Choice(["command", "reply", "event", "dead_letter"]),
                required=False)  # fmt: skip
@click.option("--write", is_flag=True, help="Regenerate every file under schemas/json/.")
def schema(name: str | None, write: bool) -> None:
    """Print the JSON Schema of a wire contract (for producers in other languages)."""
    from schemas.export import render, write_all

    if write:
        for path in write_all():
            click.echo(f"wrote {path}")
    elif name:
        click.echo(render(name).decode(), nl=False)
    else:
        raise click.UsageError("name a contract, or pass --write")


@main.command()
@click.option("--commands", "count", type=click.IntRange(1, 10_000_000), default=100_000)
@click.option("--users", type=click.IntRange(1, 10_000_000), default=10_000)
@click.option("--hot", is_flag=True, help="All commands for one user (one partition).")
@click.option("--rate", type=float, help="Pace at this many commands/s (default: flat out).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--ceiling/--no-ceiling",
    default=True,
    help="Also time a raw COPY of the same rows into scratch tables (the machine's ceiling).",
)
@click.option(
    "--transfers",
    is_flag=True,
    help="Gifts between users on different partitions (the users topped up first, unclocked).",
)
def bench(
    count: int,
    users: int,
    hot: bool,
    rate: float | None,
    as_json: bool,
    ceiling: bool,
    transfers: bool,
) -> None:
    """Load the running stack and report commands/s (or transfers/s) and reply latency."""
    from wallet.bench import run_bench

    if hot and transfers:
        raise click.UsageError("--hot and --transfers: a transfer needs two users")
    result = _run(run_bench(_settings(), count, 1 if hot else users, rate, ceiling=ceiling,
                            transfers=transfers))  # fmt: skip
    if as_json:
        click.echo(orjson.dumps(result.__dict__).decode())
    else:
        click.echo("\n".join(result.lines()))


@main.group()
def limits() -> None:
    """Daily caps per user and asset (e.g. for minors): set, remove or list them."""


_CAP = click.IntRange(0, 10**18)


@limits.command("set")
@click.argument("user_id")
@click.argument("asset")
@click.option("--daily-spend-max", type=_CAP, help="Spends and captures a UTC day, at most.")
@click.option("--daily-transfer-out-max", type=_CAP, help="Transfers out a UTC day, at most.")
@click.option("--by", "set_by", default=lambda: os.environ.get("USER", "operator"),
              help="Who sets them (kept with them).")  # fmt: skip
def limits_set(
    user_id: str,
    asset: str,
    daily_spend_max: int | None,
    daily_transfer_out_max: int | None,
    set_by: str,
) -> None:
    """Set a wallet's daily caps (an option left out: no such cap; both left out: remove
    them). A spend, capture or transfer past one is refused (daily_limit_exceeded)."""
    import asyncpg

    from storage.limits import set_limits

    caps = (daily_spend_max, daily_transfer_out_max)
    try:
        _on_db(lambda conn: set_limits(conn, user_id, asset, caps, set_by))
    except asyncpg.ForeignKeyViolationError:
        raise click.ClickException(f"no asset {asset!r}") from None
    shown = ", ".join(f"{name} {value}" for name, value in
                      (("spend", daily_spend_max), ("transfer out", daily_transfer_out_max))
                      if value is not None)  # fmt: skip
    click.echo(f"{user_id} {asset}: " + (f"daily caps {shown}" if shown else "no daily caps"))


@limits.command("list")
@click.option("--user", "user_id", help="One user's only.")
def limits_list(user_id: str | None) -> None:
    """Every capped wallet with its caps, who set them and when."""
    from storage.limits import list_limits

    for row in _on_db(lambda conn: list_limits(conn, user_id)):
        click.echo(f"{row['userId']} {row['assetId']}: spend {_or_none(row['dailySpendMax'])},"
                   f" transfer out {_or_none(row['dailyTransferOutMax'])} a day"
                   f" (by {row['setBy']}, {row['updatedAt'][:19]})")  # fmt: skip


# schemas.alerts.MonitorKind's values (a test says so), here without importing pydantic.
MONITOR_KINDS = ("balance_above", "balance_below", "spend_over_window")


@main.group()
def monitors() -> None:
    """Monitors: alerts on the alerts topic when a balance crosses a line or spending in a
    window passes a value (add, list, remove)."""


@monitors.command("add")
@click.argument("monitor_id")
@click.option("--kind", type=click.Choice(MONITOR_KINDS), required=True)
@click.option("--asset", required=True)
@click.option("--threshold", type=_CAP, required=True, help="The line, or the window's value.")
@click.option(
    "--window",
    "window_s",
    type=click.IntRange(60, 86_400),
    help="spend_over_window: the window in seconds (aligned to the epoch).",
)
@click.option("--by", "set_by", default=lambda: os.environ.get("USER", "operator"),
              help="Who adds it (kept with it).")  # fmt: skip
def monitors_add(
    monitor_id: str, kind: str, asset: str, threshold: int, window_s: int | None, set_by: str
) -> None:
    """Add (or replace) a monitor over every wallet of an asset; processors apply it within
    WALLET_MONITORS_RELOAD_MS."""
    import asyncpg

    from storage.monitors import TooManyMonitorsError, set_monitor

    try:
        _on_db(lambda conn: set_monitor(conn, (monitor_id, kind, asset, threshold, window_s),
                                        set_by))  # fmt: skip
    except asyncpg.ForeignKeyViolationError:
        raise click.ClickException(f"no asset {asset!r}") from None
    except asyncpg.CheckViolationError:
        raise click.ClickException(
            "a monitor id is 1-64 letters, digits and ._:- ; "
            "--window is for spend_over_window, and required by it"
        ) from None
    except TooManyMonitorsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{monitor_id}: {kind} {asset} {threshold}"
               + (f" in {window_s} s" if window_s else ""))  # fmt: skip


@monitors.command("list")
def monitors_list() -> None:
    """Every monitor, who added it and when."""
    from storage.monitors import list_monitors

    for m in _on_db(list_monitors):
        window = f" in {m['windowS']} s" if m["windowS"] else ""
        click.echo(f"{m['monitorId']}: {m['kind']} {m['assetId']} {m['threshold']}{window}"
                   f" (by {m['createdBy']}, {m['createdAt'][:19]})")  # fmt: skip


@monitors.command("alerts")
@click.option("--minutes", type=click.IntRange(1, 7 * 24 * 60), default=60, show_default=True)
def monitors_alerts(minutes: int) -> None:
    """The alerts of the last minutes (at most 1,000), as the alerts topic carries them."""
    from wallet.operations import print_alerts

    _run(print_alerts(_settings(), minutes))


@monitors.command("remove")
@click.argument("monitor_id")
def monitors_remove(monitor_id: str) -> None:
    """Remove a monitor."""
    from storage.monitors import remove_monitor

    if not _on_db(lambda conn: remove_monitor(conn, monitor_id)):
        raise click.ClickException(f"no monitor {monitor_id!r}")
    click.echo(f"{monitor_id}: removed")


def _or_none(value: int | None) -> str:
    return "-" if value is None else str(value)


@main.group()
def assets() -> None:
    """List or add assets, or set the order spends take their lots in and their balance limit."""


_SPEND_ORDERS = click.Choice(["free_first", "paid_first", "expiring_first"])
_BALANCE_MAX = click.IntRange(1, 10**18)  # the ledger's own bound (ledger.account.BALANCE_MAX)


@assets.command("list")
def assets_list() -> None:
    """Print every asset's code, spend order, balance limit and name."""
    sql = "SELECT code, name, spend_order, balance_max FROM assets ORDER BY code"
    for row in _on_db(lambda conn: conn.fetch(sql)):
        limit = "no limit" if row["balance_max"] is None else f"max {row['balance_max']:,}"
        click.echo(f"{row['code']:<12} {row['spend_order']:<15} {limit:<26} {row['name']}")


@assets.command("add")
@click.argument("code")
@click.argument("name")
@click.option("--spend-order", type=_SPEND_ORDERS, default="free_first", show_default=True,
              help="Which lots a spend takes first: free, paid, or the oldest.")  # fmt: skip
@click.option("--balance-max", type=_BALANCE_MAX, help="The most a wallet may hold of it.")
def assets_add(code: str, name: str, spend_order: str, balance_max: int | None) -> None:
    """Add an asset; processors see it on the next command that names it."""
    import asyncpg

    insert = (
        "INSERT INTO assets (code, name, spend_order, balance_max) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (code) DO NOTHING"
    )
    try:
        done = _on_db(lambda conn: conn.execute(insert, code, name, spend_order, balance_max))
    except asyncpg.CheckViolationError:
        raise click.ClickException(f"{code!r} is not an asset code (A-Z, 0-9, _)") from None
    click.echo(f"{code}: " + ("added" if done.endswith(" 1") else "already exists"))


@assets.command("set-order")
@click.argument("code")
@click.argument("spend_order", type=_SPEND_ORDERS)
def assets_set_order(code: str, spend_order: str) -> None:
    """Change an asset's spend order; processors use it within 10 seconds (AssetCatalog)."""
    update = "UPDATE assets SET spend_order = $2 WHERE code = $1"
    done = _on_db(lambda conn: conn.execute(update, code, spend_order))
    if done.endswith(" 0"):
        raise click.ClickException(f"no asset {code!r}")
    click.echo(f"{code}: spends take {spend_order.replace('_', ' ')}")


@assets.command("set-balance-max")
@click.argument("code")
@click.argument("balance_max", metavar="N|none")
def assets_set_balance_max(code: str, balance_max: str) -> None:
    """Set the most a wallet may hold of an asset (held money included), or `none`. Credits
    that would pass it are refused (balance_limit_exceeded) within 10 seconds; wallets above
    it already keep what they hold."""
    limit = None if balance_max == "none" else _BALANCE_MAX(balance_max)
    update = "UPDATE assets SET balance_max = $2 WHERE code = $1"
    done = _on_db(lambda conn: conn.execute(update, code, limit))
    if done.endswith(" 0"):
        raise click.ClickException(f"no asset {code!r}")
    click.echo(f"{code}: " + ("no balance limit" if limit is None else f"at most {limit:,}"))


@main.group()
def report() -> None:
    """Reports from the ledger."""


@report.command("revenue")
@click.option("--asset", required=True, help="Asset code, e.g. DIAMONDS.")
@click.option("--from", "start", type=click.DateTime(), required=True, help="Start (UTC).")
@click.option("--to", "end", type=click.DateTime(), required=True, help="End, excluded (UTC).")
def report_revenue(asset: str, start: datetime, end: datetime) -> None:
    """Paid currency consumed in [from, to): what finance books as revenue (spends of free
    currency are not; they go to free_spent)."""
    from wallet.operations import revenue

    found = _on_db(lambda conn: revenue(conn, asset, start.replace(tzinfo=UTC),
                                        end.replace(tzinfo=UTC)))  # fmt: skip
    click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())


@main.group()
def keys() -> None:
    """Create, list or revoke API keys for the HTTP API."""


@keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(["commands:write", "wallets:read", "ops"]),
              help="Repeat for several: commands:write, wallets:read, ops.")  # fmt: skip
def keys_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it: it is shown this once, only its hash is stored."""
    import asyncpg

    from wallet.apikeys import create_key

    try:
        key = _on_db(lambda conn: create_key(conn, name, list(scopes)))
    except asyncpg.UniqueViolationError:
        raise click.ClickException(f"a live key is already called {name!r}") from None
    except asyncpg.CheckViolationError:
        raise click.ClickException("a key name has 1 to 100 characters") from None
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Every key: id, name, scopes, created, revoked (never the key itself)."""
    from wallet.apikeys import list_keys

    for k in _on_db(list_keys):
        revoked = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "live"
        click.echo(f"{k.key_id}  {k.name:<20} {','.join(k.scopes):<40} "
                   f"{k.created_at:%Y-%m-%d %H:%M}  {revoked}")  # fmt: skip


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke the live key called NAME (API processes stop accepting it within
    WALLET_API_KEY_CACHE_TTL_MS)."""
    from wallet.apikeys import revoke_key

    if not _on_db(lambda conn: revoke_key(conn, name)):
        raise click.ClickException(f"no live key is called {name!r}")
    click.echo(f"{name}: revoked")


@main.command()
def projector() -> None:
    """Run the projection worker (balances and system totals)."""
    from wallet.roles import run_projector

    _run_role(run_projector)


@main.command()
def api() -> None:
    """Serve the HTTP API on WALLET_API_HOST:WALLET_API_PORT (OpenAPI docs at /docs)."""
    from wallet.api import serve

    _run_role(serve)


@main.command()
@click.option(
    "--projection", type=click.Choice(["balances"]), default="balances", show_default=True
)
@click.option("--from-scratch", is_flag=True, help="Start the rebuild over (default: resume).")
@click.option("--republish", is_flag=True, help="Re-emit ledger events to the events topic.")
@click.option("--from", "from_entry", type=click.IntRange(0), default=0,
              help="With --republish: the first ledger entry id to re-emit.")  # fmt: skip
def replay(projection: str, from_scratch: bool, republish: bool, from_entry: int) -> None:
    """Rebuild a projection from the ledger (live processor untouched), or republish events."""
    from wallet.operations import rebuild_projection, republish_events

    settings = _settings()
    if republish:
        sent = _run(republish_events(settings, from_entry))
        click.echo(f"republished {sent} events to {settings.events_topic}")
        return
    applied, seconds = _run(rebuild_projection(settings, from_scratch))
    rate = applied / seconds if seconds > 0 else 0.0
    click.echo(f"{projection}: {applied} events replayed in {seconds:.1f} s ({rate:,.0f} events/s)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(as_json: bool) -> None:
    """One screen for an operator: partitions and owners, lag, outbox backlog, projector
    positions, dead letters, recent partition resets."""
    from rich.console import Console

    from wallet.status import gather, render

    report = _run(gather(_settings()))
    if as_json:
        click.echo(report.to_json())
    else:
        Console().print(render(report))


@main.command()
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=3.0,
              show_default=True)  # fmt: skip
def healthcheck(timeout_s: float) -> None:
    """Exit 0 when this machine's wallet role answers /health: on the metrics port when
    WALLET_METRICS_PORT is set (processor, projector), else on the API port. The image's
    HEALTHCHECK runs it."""
    import urllib.error
    import urllib.request

    from wallet.metrics_server import health_url

    url = health_url(_settings())
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            click.echo(response.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"{url}: {exc}") from None


@main.command()
def verify() -> None:
    """Audit the ledger and the projection; exit 1 when anything is off."""
    from wallet.operations import run_verify

    results = _run(run_verify(_settings()))
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        click.echo(f"[{mark}] {result.name}")
        if not result.ok:
            click.echo(f"       {result.problems} problem(s), e.g.: " + "; ".join(result.examples))
    failed = sum(not r.ok for r in results)
    click.echo(f"{len(results) - failed} checks passed, {failed} failed")
    if failed:
        sys.exit(1)


@main.command("dead-letter")
@click.argument("partition", type=click.IntRange(0))
@click.argument("offset", type=click.IntRange(0))
@click.option("--reason", required=True, help="Why (kept with the request, and in the DLQ).")
@click.option("--by", "requested_by", help="Who asks (default: user@host).")
def dead_letter(partition: int, offset: int, reason: str, requested_by: str | None) -> None:
    """Last resort for a stalled partition: dead-letter the record at PARTITION OFFSET of the
    commands topic instead of processing it. The request is kept as an audit record; the
    partition's processor applies it before its next retry (no reply: the record is not read)."""
    import getpass
    import socket

    from wallet.operations import request_dead_letter

    settings = _settings()
    by = requested_by or f"{getpass.getuser()}@{socket.gethostname()}"
    reason = reason.strip()
    if not 1 <= len(reason) <= 500 or not 1 <= len(by) <= 200:
        raise click.BadParameter("--reason takes 1 to 500 characters, --by 1 to 200")
    new = _run(request_dead_letter(settings, partition, offset, reason, by))
    state = "requested" if new else "was already requested"
    click.echo(f"dead letter of {settings.commands_topic}/{partition}@{offset} {state} (by {by})")


class _Instant(click.ParamType):
    """An ISO 8601 time, with its offset (2026-12-03T12:00:00+09:00) or else taken as UTC."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time, e.g. 2026-12-03T12:00:00Z", param, ctx)
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@main.command()
@click.argument("user_id")
@click.option("--consistent", is_flag=True, help="Read the ledger instead of the projection.")
@click.option("--at", type=_Instant(), help="As the ledger says it stood then (ISO 8601).")
def balance(user_id: str, consistent: bool, at: datetime | None) -> None:
    """A user's balances, one line per asset."""
    from wallet.operations import print_balances

    _run(print_balances(_settings(), user_id, consistent, at))


@main.command()
@click.argument("user_id")
@click.option("--from", "start", type=_Instant(), required=True, help="Start (ISO 8601).")
@click.option("--to", "end", type=_Instant(), required=True, help="End, excluded (ISO 8601).")
@click.option("--asset", help="One asset only.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of tables.")
def statement(
    user_id: str, start: datetime, end: datetime, asset: str | None, as_csv: bool
) -> None:
    """A user's statement of [from, to): per asset the opening balance, every movement and
    the closing balance, from the ledger."""
    from wallet.operations import print_statement

    if start >= end:
        raise click.BadParameter("--from must be before --to")
    _run(print_statement(_settings(), user_id, (start, end), asset, as_csv))


@main.command()
@click.argument("transfer_id", type=click.UUID)
def transfer(transfer_id: uuid.UUID) -> None:
    """A transfer and its steps: pending, completed or refused (its id: the sender's debit's
    transaction id, which a transfer's reply carries)."""
    from wallet.operations import print_found

    _run(print_found(_settings(), "transfer", transfer_id))


@main.command()
@click.argument("purchase_id", type=click.UUID)
def purchase(purchase_id: uuid.UUID) -> None:
    """A purchase and each asset it moved (its id: the `purchase.id` of its reply)."""
    from wallet.operations import print_found

    _run(print_found(_settings(), "purchase", purchase_id))


@main.command()
@click.argument("user_id")
@click.option("--asset")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
def history(user_id: str, asset: str | None, limit: int) -> None:
    """A user's latest transactions, newest first."""
    from wallet.operations import print_history

    _run(print_history(_settings(), user_id, asset, limit))
