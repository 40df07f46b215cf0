"""`wallet up`: the whole stack on one machine, for a newcomer, stopped cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import click
import structlog

from commands.client import WalletClient
from foundation.settings import STACK_ENV_FILE, Settings
from schemas.commands import CommandType, new_command
from storage.db import connection
from wallet.api import serve
from wallet.apikeys import SCOPES, create_key, revoke_key
from wallet.devstack import EmbeddedPostgres
from wallet.roles import run_processor, run_projector
from wallet.stack import Services, embedded_services, ensure_database, prepare, write_stack_env

log = structlog.get_logger("wallet.up")
SMOKE_USER = "demo-player"
SMOKE_KEY = "wallet-up-welcome-bonus"  # fixed: a second `wallet up` shows a duplicate reply
DEV_KEY_NAME = "dev"
DEV_KEY_FILE = STACK_ENV_FILE.parent / "dev-api-key"


async def run_up(settings: Settings, stop_event: Callable[[], asyncio.Event]) -> None:
    stop = stop_event()
    with embedded_services(settings) as services:
        kinds = {type(s) for s in services.embedded}
        effective = settings.model_copy(
            update={
                "database_url": services.database_url,
                "kafka_bootstrap": services.kafka_bootstrap,
                "producer_idempotence": settings.producer_idempotence and not services.on_tansu,
            }
        )
        if EmbeddedPostgres in kinds:
            await ensure_database(services.database_url, settings.db_timeout_ms / 1000)
        await prepare(effective)
        if services.embedded:
            write_stack_env(services)
        api_key = await _dev_key(effective) if EmbeddedPostgres in kinds else None
        roles = [
            asyncio.create_task(run_processor(effective, stop), name="processor"),
            asyncio.create_task(run_projector(effective, stop), name="projector"),
            asyncio.create_task(serve(effective, stop), name="api"),
        ]
        try:
            _banner(effective, services, api_key)
            await _smoke(effective)
            click.echo("\nRunning. Press Ctrl-C to stop.")
            await asyncio.wait(
                [*roles, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            # Every role stops and closes its clients before the first failure is raised: a
            # role that failed at once (a taken API port) must not leave the others' Kafka
            # clients unclosed.
            stop.set()
            ended = await asyncio.gather(*roles, return_exceptions=True)
            failures = [e for e in ended if isinstance(e, BaseException)]
            if services.embedded:
                for path in (STACK_ENV_FILE, DEV_KEY_FILE):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            if failures:
                raise failures[0]
    click.echo("Stopped.")


async def _dev_key(settings: Settings) -> str:
    """A development API key with every scope, replacing the previous one (embedded stack only:
    never minted on someone's real database). Written to DEV_KEY_FILE for scripts."""
    async with connection(settings) as conn:
        await revoke_key(conn, DEV_KEY_NAME)
        key = await create_key(conn, DEV_KEY_NAME, list(SCOPES))
    DEV_KEY_FILE.unlink(missing_ok=True)  # created afresh: private from its first byte
    DEV_KEY_FILE.touch(mode=0o600)
    DEV_KEY_FILE.write_text(key + "\n")
    return key


def _banner(settings: Settings, services: Services, api_key: str | None) -> None:
    click.echo("")
    click.echo("Dino Wallet is up.")
    click.echo(f"  PostgreSQL : {settings.database_url}")
    click.echo(f"  Kafka      : {settings.kafka_bootstrap} ({services.broker})")
    click.echo(f"  commands   : {settings.commands_topic} ({settings.partitions} partitions)")
    click.echo(f"  replies    : {settings.replies_topic}")
    click.echo(f"  events     : {settings.events_topic}")
    click.echo(f"  dead letter: {settings.dlq_topic}")
    click.echo(f"  alerts     : {settings.alerts_topic}")
    click.echo(f"  HTTP API   : http://{settings.api_host}:{settings.api_port} (docs: /docs)")
    if api_key:
        click.echo(f"  API key    : {api_key}")
        click.echo(f"               (development key, every scope; also in {DEV_KEY_FILE})")
    else:
        click.echo("  API key    : create one with `wallet keys create NAME --scope ...`")
    if services.embedded:
        click.echo(f"  (embedded services; other terminals find them through {STACK_ENV_FILE})")
    click.echo("Try, in another terminal:")
    click.echo("  .venv/bin/wallet send top-up --user alice --asset GOLD --amount 100")
    click.echo("  .venv/bin/wallet send spend --user alice --asset GOLD --amount 30")
    click.echo("  .venv/bin/wallet balance alice ; .venv/bin/wallet history alice")
    click.echo(f'  curl -H "Authorization: Bearer $(cat {DEV_KEY_FILE})" '
               f"http://{settings.api_host}:{settings.api_port}/wallet/alice/balance")  # fmt: skip
    click.echo("  .venv/bin/wallet bench --commands 100000 --users 10000")


async def _smoke(settings: Settings) -> None:
    """Send one bonus through the running stack and show its reply."""
    command = new_command(
        type=CommandType.BONUS,
        user_id=SMOKE_USER,
        asset="GOLD",
        amount=50,
        idempotency_key=SMOKE_KEY,
        command_id=uuid.uuid4(),
        sent_at=datetime.now(UTC),
        description="welcome bonus from wallet up",
        reply_to=settings.replies_topic,
    )
    async with WalletClient(settings) as client:
        reply = await client.request(command, timeout_s=60.0)
    click.echo(f"\nA command went through: bonus 50 GOLD for {SMOKE_USER}")
    click.echo(reply.model_dump_json(indent=2))
