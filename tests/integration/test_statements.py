"""Balances at a past time and statements, read from a real PostgreSQL ledger whose batches
were committed at chosen times by the real planner and event store."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from foundation.settings import Settings
from projections import statements
from projections.statements import AccountAt, StatementTooLongError
from schemas.commands import Command
from storage.db import create_pool
from storage.event_store import PostgresEventStore
from tests.contract.batches import planned_commands
from tests.integration.helpers import command

TOPIC, PARTITION = "statements.commands", 0
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Ledger:
    """An event store that commits each batch at the time it is given."""

    def __init__(self, store: PostgresEventStore, epoch: int) -> None:
        self.store, self.epoch, self.offset = store, epoch, 0

    async def commit(self, minutes: int, *commands: Command) -> None:
        position, plan = await planned_commands(
            self.store, TOPIC, PARTITION, self.epoch, self.offset, commands, _at(minutes)
        )
        assert all(d.outcome == "accepted" for d in plan.decided), plan.decided
        await self.store.commit_batch(position, plan)
        self.offset += len(commands)


@pytest.fixture
async def pool(stack: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(stack)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> Ledger:
    store = PostgresEventStore(pool, 10.0)
    claim = await store.claim_partition(TOPIC, PARTITION, "test")
    return Ledger(store, claim.epoch)


async def _story(ledger: Ledger) -> None:
    """ana: +100 paid at :00, +30 free at :10 (and 5 DIAMONDS), -50 at :20 (free first),
    a hold of 20 at :30."""
    await ledger.commit(0, command("top_up", "ana", 100))
    await ledger.commit(10, command("bonus", "ana", 30),
                        command("top_up", "ana", 5, asset="DIAMONDS"))  # fmt: skip
    await ledger.commit(20, command("spend", "ana", 50))
    await ledger.commit(30, command("hold", "ana", 20, expires_in_s=3600))


class TestBalancesAt:
    async def test_each_time_sees_what_was_recorded_by_then(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """A balance at T counts every entry recorded at or before T, and none after."""
        await _story(ledger)
        async with pool.acquire() as conn:
            before = await statements.balances_at(conn, "ana", _at(-1))
            at_first = await statements.balances_at(conn, "ana", _at(0))
            after_spend = await statements.balances_at(conn, "ana", _at(25))
            now = await statements.balances_at(conn, "ana", _at(60))
        assert before == {}
        assert at_first == {"GOLD": AccountAt(1, 100, 100, 0, 0)}
        assert after_spend == {"DIAMONDS": AccountAt(1, 5, 5, 0, 0),
                               "GOLD": AccountAt(3, 80, 80, 0, 0)}  # fmt: skip
        assert now["GOLD"] == AccountAt(4, 60, 60, 20, 0)
        assert now["GOLD"].document() == {"balance": 80, "paid": 60, "free": 0, "held": 20,
                                          "available": 60, "debt": 0, "version": 4}  # fmt: skip


class TestStatements:
    async def test_opening_movements_and_closing_per_asset(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """[from, to) takes the entries from `from` on and stops before `to`; the opening is
        the balance before `from`."""
        await _story(ledger)
        async with pool.acquire() as conn:
            found = await statements.statement(conn, "ana", _at(10), _at(30), None)
        gold = found["GOLD"]
        assert gold.opening == AccountAt(1, 100, 100, 0, 0)
        assert [(m.type, m.amount, m.after.available) for m in gold.movements] == [
            ("bonus", 30, 130), ("spend", -50, 80)
        ]  # fmt: skip
        assert gold.closing == AccountAt(3, 80, 80, 0, 0)
        diamonds = found["DIAMONDS"]
        assert diamonds.opening == statements.NOTHING_YET and len(diamonds.movements) == 1

    async def test_one_asset_and_a_quiet_period(self, ledger: Ledger, pool: asyncpg.Pool) -> None:
        """An asset filter keeps one asset; a period without entries opens and closes alike."""
        await _story(ledger)
        async with pool.acquire() as conn:
            quiet = await statements.statement(conn, "ana", _at(40), _at(50), "GOLD")
            nobody = await statements.statement(conn, "nobody", _at(0), _at(50), None)
        assert list(quiet) == ["GOLD"] and quiet["GOLD"].movements == []
        assert quiet["GOLD"].opening == quiet["GOLD"].closing == AccountAt(4, 60, 60, 20, 0)
        assert nobody == {}

    async def test_a_hold_moves_what_is_available_not_the_balance(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """A movement's `amount` is the change of what is available, its `change` that of the
        balance, held money included: a hold takes 20 from the one and nothing from the
        other."""
        await _story(ledger)
        async with pool.acquire() as conn:
            found = await statements.statement(conn, "ana", _at(30), _at(40), "GOLD")
        (hold,) = found["GOLD"].movements
        assert (hold.type, hold.amount, hold.change) == ("hold", -20, 0)

    async def test_consecutive_periods_chain_when_the_clock_went_back(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """Entries stamped out of order (a writer on a host whose clock is behind) still fall
        in exactly one of consecutive periods, and each closing is the next opening."""
        await ledger.commit(0, command("top_up", "bo", 10))
        await ledger.commit(5, command("top_up", "bo", 20))
        await ledger.commit(3, command("spend", "bo", 4))  # stamped before the one above
        bounds = [_at(m) for m in (-1, 2, 4, 6)]
        async with pool.acquire() as conn:
            parts = [
                (await statements.statement(conn, "bo", a, b, "GOLD")).get("GOLD")
                for a, b in itertools.pairwise(bounds)
            ]
        versions = [m.after.version for p in parts if p for m in p.movements]
        assert versions == [1, 2, 3]
        chained = [p for p in parts if p]
        for one, two in itertools.pairwise(chained):
            assert one.closing == two.opening
        assert chained[-1].closing.available == 26

    async def test_any_cut_of_time_chains_and_covers_every_entry_once(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """For seeded random histories, whose batch times sometimes go back, cut into random
        consecutive periods: each closing is the next opening, every version falls in
        exactly one period and in order, and the last closing is the balance at the end."""
        rng = random.Random(7)
        for case in range(20):
            user, minutes, entries = f"p{case}", 0, 0
            for _ in range(rng.randint(1, 8)):
                minutes += rng.randint(-3, 6)
                credit = rng.randint(1, 50)
                batch = [command("top_up", user, credit)]
                if rng.random() < 0.5:
                    batch.append(command("spend", user, rng.randint(1, credit)))
                await ledger.commit(minutes, *batch)
                entries += len(batch)
            cuts = sorted({rng.randint(-30, 60) for _ in range(rng.randint(1, 6))} | {-60, 90})
            async with pool.acquire() as conn:
                parts = [(await statements.statement(conn, user, _at(a), _at(b), "GOLD"))
                         for a, b in itertools.pairwise(cuts)]  # fmt: skip
                end = await statements.balances_at(conn, user, _at(90) - timedelta(microseconds=1))
            found = [p["GOLD"] for p in parts if p]
            assert found[0].opening == statements.NOTHING_YET, case
            for one, two in itertools.pairwise(found):
                assert one.closing == two.opening, case
            versions = [m.after.version for p in found for m in p.movements]
            assert versions == list(range(1, entries + 1)), case
            assert found[-1].closing == end["GOLD"], case

    async def test_a_period_past_the_bound_is_refused(
        self, ledger: Ledger, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """More movements than one statement gives: refused with its code, not truncated."""
        await _story(ledger)
        monkeypatch.setattr(statements, "STATEMENT_MOVEMENTS_MAX", 4)
        async with pool.acquire() as conn:
            with pytest.raises(StatementTooLongError) as refused:
                await statements.statement(conn, "ana", _at(0), _at(60), None)
            fits = await statements.statement(conn, "ana", _at(0), _at(60), "GOLD")
        assert refused.value.code == "statement_too_long" and refused.value.data["movements"] == 5
        assert len(fits["GOLD"].movements) == 4

    async def test_a_description_a_spreadsheet_would_run_is_quoted(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """A description starting like a formula comes out inert in the CSV, commas quoted."""
        await ledger.commit(0, command("top_up", "cat", 5, description='=HYPERLINK("x"), 1'))
        async with pool.acquire() as conn:
            found = await statements.statement(conn, "cat", _at(-1), _at(1), None)
        text = statements.as_csv(found, _at(-1), _at(1))
        assert ',"\'=HYPERLINK(""x""), 1"\n' in text

    async def test_csv_has_opening_movements_and_closing_rows(
        self, ledger: Ledger, pool: asyncpg.Pool
    ) -> None:
        """The CSV form gives the same figures as rows: opening, one per movement, closing."""
        await _story(ledger)
        async with pool.acquire() as conn:
            found = await statements.statement(conn, "ana", _at(10), _at(30), "GOLD")
        lines = statements.as_csv(found, _at(10), _at(30)).splitlines()
        assert lines[0] == ",".join(statements.CSV_COLUMNS)
        rows = [line.split(",") for line in lines[1:]]
        assert [(r[1], r[4], r[5], r[6], r[11]) for r in rows] == [
            ("opening", "", "", "", "100"), ("movement", "bonus", "30", "30", "130"),
            ("movement", "spend", "-50", "-50", "80"), ("closing", "", "", "", "80"),
        ]  # fmt: skip
