"""Monitors end to end: set with `wallet monitors`, evaluated by a processor on real
PostgreSQL, their alerts published to the alerts topic on a real broker with the
transactions that raised them."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from foundation.settings import Settings
from ledger.monitors import alert_id
from schemas.alerts import Alert
from tests.integration.helpers import client_for, command, fetch, read_topic, running_processor
from tests.integration.processes import run_wallet

pytestmark = pytest.mark.also_tansu


def add(settings: Settings, *args: str) -> None:
    done = run_wallet(settings, "monitors", "add", *args)
    assert done.returncode == 0, done.stderr


class TestAlerts:
    async def test_each_crossing_is_published_once_with_its_id(self, stack: Settings) -> None:
        """A balance rising past a line and spending past a value in a window each raise one
        alert, on the alerts topic keyed by the user, its id derived from the monitor and the
        transaction; `wallet monitors alerts` prints the very messages; `wallet status`
        counts them."""
        add(stack, "rich", "--kind", "balance_above", "--asset", "GOLD", "--threshold", "1000")
        add(stack, "spender", "--kind", "spend_over_window", "--asset", "GOLD",
            "--threshold", "100", "--window", "3600")  # fmt: skip
        quick = stack.model_copy(update={"monitors_reload_ms": 100})
        async with running_processor(quick), client_for(stack) as client:
            credit = await client.request(command("top_up", "ivy", 1500))
            await client.request(command("spend", "ivy", 60))
            spend = await client.request(command("spend", "ivy", 60))
            await client.request(command("spend", "ivy", 60))  # past it already: nothing new
        published = await read_topic(stack, stack.alerts_topic, 2)
        found = [Alert.model_validate_json(v) for v in published]
        assert [(a.monitor_id, a.value, a.transaction_id) for a in found] == [
            ("rich", 1500, credit.transaction_id),
            ("spender", 120, spend.transaction_id),
        ]
        assert all(a.alert_id == alert_id(a.monitor_id, a.transaction_id) for a in found)
        [raised] = await fetch(stack, "SELECT count(*) AS n FROM processed_commands"
                               " WHERE alerts IS NOT NULL")  # fmt: skip
        assert raised["n"] == 2
        printed = await asyncio.to_thread(run_wallet, stack, "monitors", "alerts")
        assert printed.stdout.splitlines() == [v.decode() for v in published]
        status = await asyncio.to_thread(run_wallet, stack, "status", "--json")
        assert orjson.loads(status.stdout)["alerts"] == {"balance_above": 1, "spend_over_window": 1}

    async def test_a_republished_alert_keeps_its_id(self, stack: Settings) -> None:
        """When the relay publishes a partition's outbox again (its watermark lost), the
        alert comes again with the same id: consumers dedupe by it."""
        add(stack, "poor", "--kind", "balance_below", "--asset", "GOLD", "--threshold", "10")
        quick = stack.model_copy(update={"monitors_reload_ms": 100})
        async with running_processor(quick), client_for(stack) as client:
            await client.request(command("top_up", "max", 50))
            await client.request(command("spend", "max", 45))
        await fetch(stack, "UPDATE outbox_positions SET published_offset = 0")
        async with running_processor(quick):
            again = await read_topic(stack, stack.alerts_topic, 2)
        ids = {orjson.loads(v)["alert_id"] for v in again}
        assert len(again) == 2 and len(ids) == 1


class TestCommands:
    def test_monitors_are_listed_replaced_and_removed(self, stack: Settings) -> None:
        """`wallet monitors add` replaces a monitor of the same id; list shows it; a window on
        a balance monitor and an unknown asset are refused; remove says when there is none."""
        add(stack, "whale", "--kind", "balance_above", "--asset", "GOLD", "--threshold", "5")
        add(stack, "whale", "--kind", "balance_above", "--asset", "DIAMONDS", "--threshold", "9")
        listed = run_wallet(stack, "monitors", "list")
        assert "whale: balance_above DIAMONDS 9" in listed.stdout
        windowed = run_wallet(stack, "monitors", "add", "w", "--kind", "balance_below",
                              "--asset", "GOLD", "--threshold", "1", "--window", "60")  # fmt: skip
        assert windowed.returncode == 1 and "--window" in windowed.stderr
        ruby = run_wallet(stack, "monitors", "add", "r", "--kind", "balance_below",
                          "--asset", "RUBY", "--threshold", "1")  # fmt: skip
        assert ruby.returncode == 1 and "no asset" in ruby.stderr
        assert run_wallet(stack, "monitors", "remove", "whale").returncode == 0
        gone = run_wallet(stack, "monitors", "remove", "whale")
        assert gone.returncode == 1 and "no monitor" in gone.stderr
