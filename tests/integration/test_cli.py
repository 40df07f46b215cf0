"""The `wallet` command line against a real stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from foundation.settings import Settings
from messaging.kafka import partition_for
from processor.worker import AssetCatalog
from tests.integration.helpers import (
    client_for,
    command,
    fetch,
    read_topic,
    refuse_commands,
    running_processor,
)
from tests.integration.processes import run_wallet, settings_env


class TestAssets:
    async def test_added_asset_is_usable_at_once(self, stack: Settings) -> None:
        """An asset added by the CLI is accepted by a running processor right away."""
        async with running_processor(stack), client_for(stack) as client:
            before = await client.request(command("top_up", "ivy", 5, asset="RUBIES"))
            added = await asyncio.to_thread(run_wallet, stack, "assets", "add", "RUBIES", "Rubies")
            after = await client.request(command("top_up", "ivy", 5, asset="RUBIES"))
        assert before.error is not None and before.error.code == "unknown_asset"
        assert added.returncode == 0 and "added" in added.stdout
        assert after.status == "accepted"
        listed = run_wallet(stack, "assets", "list")
        assert "RUBIES" in listed.stdout and "GOLD" in listed.stdout

    async def test_a_balance_limit_refuses_credits_past_it(self, stack: Settings) -> None:
        """`--balance-max` on add, `set-balance-max` later: a credit past the limit is refused
        (balance_limit_exceeded), and `none` lifts it."""
        added = run_wallet(stack, "assets", "add", "STARS", "Stars", "--balance-max", "100")
        listed = run_wallet(stack, "assets", "list").stdout
        async with running_processor(stack), client_for(stack) as client:
            fits = await client.request(command("top_up", "jo", 100, asset="STARS"))
            past = await client.request(command("top_up", "jo", 1, asset="STARS"))
            run_wallet(stack, "assets", "set-balance-max", "STARS", "none")
            await asyncio.sleep(AssetCatalog.RELOAD_AFTER_S + 1)  # processors reload by then
            lifted = await client.request(command("top_up", "jo", 1, asset="STARS"))
        assert added.returncode == 0 and "max 100" in listed
        assert fits.status == "accepted" and past.error is not None
        assert past.error.code == "balance_limit_exceeded" and lifted.status == "accepted"
        refused = run_wallet(stack, "assets", "set-balance-max", "STARS", "0")
        assert refused.returncode == 2

    def test_bad_code_is_refused(self, stack: Settings) -> None:
        """A malformed asset code is refused with a clear message."""
        result = run_wallet(stack, "assets", "add", "bad code", "x")
        assert result.returncode != 0 and "not an asset code" in result.stderr


class TestSend:
    async def test_send_prints_the_reply(self, stack: Settings) -> None:
        """`wallet send` publishes a command and prints its reply; a rejection exits 1."""
        async with running_processor(stack):
            ok = await asyncio.to_thread(
                run_wallet, stack, "send", "top-up", "--user", "jo", "--amount", "9"
            )
            refused = await asyncio.to_thread(
                run_wallet, stack, "send", "spend", "--user", "jo", "--amount", "10"
            )
        assert ok.returncode == 0 and '"balance": 9' in ok.stdout
        assert refused.returncode == 1 and "insufficient_funds" in refused.stdout

    async def test_a_transfer_is_sent_and_read(self, stack: Settings) -> None:
        """`wallet send transfer --to` prints the transfer's reply (completed, or refused
        with exit 1); `wallet transfer ID` prints the transfer and its steps."""
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", "ada", 50))
            await client.request(command("top_up", "cal", 1))
            gift = await asyncio.to_thread(run_wallet, stack, "send", "transfer", "--user", "ada",
                                           "--to", "cal", "--amount", "20")  # fmt: skip
            lost = await asyncio.to_thread(run_wallet, stack, "send", "transfer", "--user", "ada",
                                           "--to", "nobody", "--amount", "5")  # fmt: skip
        assert gift.returncode == 0 and '"status": "completed"' in gift.stdout
        assert lost.returncode == 1 and "unknown_wallet" in lost.stdout
        transfer_id = orjson.loads(gift.stdout)["transfer"]["id"]
        shown = run_wallet(stack, "transfer", transfer_id)
        assert shown.returncode == 0 and orjson.loads(shown.stdout)["status"] == "completed"
        missing = run_wallet(stack, "transfer", str(uuid.uuid4()))
        assert missing.returncode == 1 and "no transfer" in missing.stderr

    async def test_a_purchase_is_sent_and_read(self, stack: Settings) -> None:
        """`wallet send purchase --cost --grant --sku` prints the purchase's reply (a refused
        one exits 1); `wallet purchase ID` prints its parts; a malformed --cost is said;
        `wallet report revenue` tells what conversions took and granted."""
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", "ada", 10, "DIAMONDS"))
            converted = await asyncio.to_thread(
                run_wallet, stack, "send", "purchase", "--user", "ada", "--cost", "DIAMONDS:4",
                "--grant", "GOLD:400", "--sku", "gold-pack")  # fmt: skip
            refused = await asyncio.to_thread(
                run_wallet, stack, "send", "purchase", "--user", "ada", "--cost", "GOLD:1",
                "--cost", "DIAMONDS:7", "--sku", "sword")  # fmt: skip
        assert converted.returncode == 0, converted.stderr
        info = orjson.loads(converted.stdout)["purchase"]
        assert info["kind"] == "conversion" and info["parts"][1]["amount"] == 400
        assert refused.returncode == 1 and '"refused_asset": "DIAMONDS"' in refused.stdout
        shown = run_wallet(stack, "purchase", info["id"])
        assert shown.returncode == 0 and len(orjson.loads(shown.stdout)["parts"]) == 2
        malformed = run_wallet(stack, "send", "purchase", "--user", "ada", "--cost", "GOLD")
        assert malformed.returncode == 2 and "ASSET:AMOUNT" in malformed.stderr
        period = ("--from", "2000-01-01", "--to", "2100-01-01")
        for asset, key, paid in (("DIAMONDS", "converted_in", 4), ("GOLD", "converted_out", 400)):
            report = run_wallet(stack, "report", "revenue", "--asset", asset, *period)
            assert orjson.loads(report.stdout)[key] == {"paid": paid, "free": 0}, report.stdout

    def test_bad_setting_is_explained(self, stack: Settings) -> None:
        """A bad WALLET_ value stops the command with the variable's name."""
        env = settings_env(stack) | {"WALLET_PARTITIONS": "-3"}
        result = subprocess.run(
            [sys.executable, "-m", "wallet", "topics"], env=env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0 and "WALLET_PARTITIONS" in result.stderr


class TestDeadLetter:
    async def test_an_operator_gets_a_stalled_partition_past_a_record(
        self, stack: Settings
    ) -> None:
        """A record the database keeps failing for its own reasons (never set aside on its own)
        is dead-lettered by `wallet dead-letter`: audited, applied before the next retry, and
        the command behind it is accepted; asking twice or for a processed record is said."""
        settings = stack.model_copy(update={"retry_backoff_max_ms": 200})
        await refuse_commands(settings, "53100")  # disk_full: the database's kind of failure
        partition = str(partition_for("erin", settings.partitions))
        async with running_processor(settings), client_for(settings) as client:
            stuck = await client.publish(command("top_up", "erin", 5, key="poison-1"))
            behind = await client.publish(command("top_up", "erin", 7))
            await client.flush()
            await asyncio.sleep(1)
            ask = ("dead-letter", partition, "0", "--by", "tester", "--reason")
            asked = await asyncio.to_thread(run_wallet, settings, *ask, "disk full on it")
            again = await asyncio.to_thread(run_wallet, settings, *ask, "again")
            reply = await asyncio.wait_for(behind, 30)
            late = ("dead-letter", partition, "1", "--reason", "too late")
            done = await asyncio.to_thread(run_wallet, settings, *late)
            early = ("dead-letter", partition, "2", "--reason", "not there yet")
            future = await asyncio.to_thread(run_wallet, settings, *early)
        assert asked.returncode == 0 and "requested (by tester)" in asked.stdout
        assert again.returncode == 0 and "already requested" in again.stdout
        assert done.returncode != 0 and "already processed" in done.stderr
        assert future.returncode != 0 and "has no record 2 yet" in future.stderr
        assert reply["status"] == "accepted" and reply["balance"] == 7 and not stuck.done()
        [letter] = [orjson.loads(v) for v in await read_topic(settings, settings.dlq_topic, 1)]
        assert letter["code"] == "operator_dead_lettered" and letter["source_offset"] == 0
        assert "disk full on it (by tester)" in letter["reason"]
        rows = await fetch(settings, "SELECT requested_by, reason FROM dead_letter_requests")
        assert [tuple(r) for r in rows] == [("tester", "disk full on it")]


class TestLimits:
    async def test_a_daily_cap_refuses_a_spend_past_it(self, stack: Settings) -> None:
        """`wallet limits set` caps a wallet's spends a day; a spend past the cap is refused
        (daily_limit_exceeded), another wallet is not capped; `list` shows it, and setting
        no cap removes it."""
        capped = run_wallet(stack, "limits", "set", "kid", "GOLD", "--daily-spend-max", "50",
                            "--by", "support")  # fmt: skip
        assert capped.returncode == 0 and "daily caps spend 50" in capped.stdout
        async with running_processor(stack), client_for(stack) as client:
            for user in ("kid", "grown"):
                await client.request(command("top_up", user, 500))
            first = await client.request(command("spend", "kid", 30))
            second = await client.request(command("spend", "kid", 30))
            other = await client.request(command("spend", "grown", 300))
        assert first.status == "accepted" and other.status == "accepted"
        assert second.error is not None and second.error.code == "daily_limit_exceeded"
        listed = run_wallet(stack, "limits", "list")
        assert "kid GOLD: spend 50, transfer out - a day (by support" in listed.stdout
        assert run_wallet(stack, "limits", "set", "kid", "GOLD").returncode == 0
        assert run_wallet(stack, "limits", "list").stdout == ""
        unknown = run_wallet(stack, "limits", "set", "kid", "RUBY", "--daily-spend-max", "1")
        assert unknown.returncode == 1 and "no asset" in unknown.stderr


class TestOperatorCommands:
    async def test_balance_history_verify_replay(self, stack: Settings) -> None:
        """The operator commands print tables and reports, and verify exits 0 on a clean ledger."""
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", "kim", 40))
            await client.request(command("spend", "kim", 15, description="potion"))
        replayed = await asyncio.to_thread(run_wallet, stack, "replay", "--from-scratch")
        assert replayed.returncode == 0 and "4 events replayed" in replayed.stdout
        shown = run_wallet(stack, "balance", "kim")
        assert shown.returncode == 0 and "GOLD" in shown.stdout and "25" in shown.stdout
        listed = run_wallet(stack, "history", "kim")
        assert "potion" in listed.stdout and "-15" in listed.stdout and "+40" in listed.stdout
        audit = run_wallet(stack, "verify")
        assert audit.returncode == 0 and "0 failed" in audit.stdout

    async def test_balance_at_a_time_and_statement(self, stack: Settings) -> None:
        """`balance --at` shows the ledger as it stood then; `statement` prints the period's
        movements between opening and closing, as tables or CSV; a bad time is refused."""
        async with running_processor(stack), client_for(stack) as client:
            await client.request(command("top_up", "lee", 40))
            mid = datetime.now(UTC)
            await client.request(command("spend", "lee", 15))
        then = run_wallet(stack, "balance", "lee", "--at", mid.isoformat())
        gold = [line.split() for line in then.stdout.splitlines() if "GOLD" in line]
        assert then.returncode == 0 and "ledger at" in then.stdout
        assert [cell for cell in gold[0] if cell.isdigit()][:2] == ["40", "40"]  # balance, paid
        period = ["--from", (mid - timedelta(hours=1)).isoformat(),
                  "--to", (datetime.now(UTC) + timedelta(seconds=1)).isoformat()]  # fmt: skip
        table = run_wallet(stack, "statement", "lee", *period)
        assert table.returncode == 0 and "opening" in table.stdout and "-15" in table.stdout
        rows = run_wallet(stack, "statement", "lee", *period, "--csv").stdout.splitlines()
        assert [r.split(",")[1] for r in rows[1:]] == ["opening", "movement", "movement",
                                                       "closing"]  # fmt: skip
        bad = run_wallet(stack, "balance", "lee", "--at", "noon")
        assert bad.returncode == 2 and "ISO 8601" in bad.stderr

    async def test_republish_sends_ledger_events_again(self, stack: Settings) -> None:
        """--republish re-emits every accepted transaction to the events topic, in order."""
        from messaging.kafka import make_consumer

        async with running_processor(stack), client_for(stack) as client:
            for amount in (1, 2, 3):
                await client.request(command("top_up", "lee", amount))
        sent = await asyncio.to_thread(run_wallet, stack, "replay", "--republish", "--from", "0")
        assert sent.returncode == 0 and "republished 3 events" in sent.stdout
        consumer = make_consumer(stack, stack.events_topic, auto_offset_reset="earliest")
        await consumer.start()
        try:
            values: list[bytes] = []
            for _ in range(20):
                batch = await consumer.getmany(timeout_ms=500)
                values += [r.value for records in batch.values() for r in records]
                if len(values) >= 6:
                    break
        finally:
            await consumer.stop()
        from schemas.events import LedgerEvent

        events = [LedgerEvent.model_validate_json(v) for v in values]
        assert [e.amount for e in events] == [1, 2, 3, 1, 2, 3]  # live, then republished
        assert events[3].transaction_id == events[0].transaction_id
