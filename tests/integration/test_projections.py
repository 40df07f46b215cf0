"""The read side against a real ledger: projection, replay, verify, republish, projector crash."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from foundation.settings import Settings
from messaging.kafka import partition_for
from projections.replay import rebuild
from schemas.commands import AMOUNT_MAX
from tests.integration.helpers import (
    audit,
    client_for,
    command,
    eventually,
    fetch,
    running_processor,
    running_projector,
    send_all,
    wait_projected,
)
from tests.integration.processes import WalletProcess


def _mixed_load(count: int, users: int, seed: int) -> list:  # type: ignore[type-arg]
    rng = random.Random(seed)
    names = [f"reader-{seed}-{i}" for i in range(users)]
    commands = [command("top_up", u, 500) for u in names]
    for _ in range(count - users):
        kind = rng.choice(["top_up", "bonus", "spend", "spend", "transfer"])
        asset = rng.choice(["GOLD", "DIAMONDS"])
        if kind == "transfer":  # among the first ten (their later replies leave balances out)
            sender, receiver = rng.sample(names[:GIVERS], 2)
            commands.append(command(kind, sender, rng.randint(1, 100), asset=asset,
                                    to_user_id=receiver))  # fmt: skip
            continue
        commands.append(command(kind, rng.choice(names), rng.randint(1, 300), asset=asset))
    return commands


GIVERS = 10  # the users of a mixed load who give and receive transfers


async def _projection(settings: Settings) -> tuple[list[tuple], list[tuple]]:  # type: ignore[type-arg]
    balances = await fetch(settings, "SELECT user_id, asset, balance, version FROM balances"
                                     " ORDER BY 1, 2")  # fmt: skip
    totals = await fetch(settings, "SELECT * FROM system_totals ORDER BY 1, 2")
    return [tuple(r) for r in balances], [tuple(r) for r in totals]


class TestProjector:
    async def test_projection_matches_the_ledger_after_mixed_load(self, stack: Settings) -> None:
        """After a mixed load every projected balance and system total equals the ledger's."""
        commands = _mixed_load(3000, 200, seed=3)
        async with running_processor(stack), running_projector(stack), client_for(stack) as c:
            replies = await send_all(c, commands)
            await wait_projected(stack)
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems
        balances, totals = await _projection(stack)
        assert len(balances) > 200 and {t[1] for t in totals} >= {"treasury", "revenue"}
        givers = {c.user_id for c in commands if c.type == "transfer"}
        assert givers and len({r["type"] for r in replies}) == 4  # transfers among them
        last = {(r["user_id"], r["asset"]): r["balance"] for r in replies
                if r["status"] == "accepted" and r["user_id"] not in givers}  # fmt: skip
        projected = {(u, a): b for u, a, b, _ in balances}
        assert all(projected[k] == v for k, v in last.items() if k in projected)


class TestTotalsPast64Bits:
    async def test_projector_and_replay_stay_exact(self, stack: Settings) -> None:
        """9,300 top-ups of the largest amount over 10 users (each wallet under its limit) take
        the treasury's total past -2^63: the projector, verify and a rebuild from scratch keep
        it exact (a bigint total once failed the projector on every retry)."""
        users = [f"whale-{i}" for i in range(10)]
        commands = [command("top_up", u, AMOUNT_MAX) for _ in range(930) for u in users]
        async with running_processor(stack), running_projector(stack), client_for(stack) as c:
            replies = await send_all(c, commands, timeout_s=180)
            await wait_projected(stack, timeout_s=120)
            live = await _projection(stack)
            assert stack.database_url
            conn = await asyncpg.connect(stack.database_url)
            try:
                await rebuild(conn, from_scratch=True, progress=lambda n: None)
            finally:
                await conn.close()
        assert {r["status"] for r in replies} == {"accepted"}
        treasury = -9300 * AMOUNT_MAX
        assert treasury < -(2**63)
        assert [t[1:] for t in live[1]] == [("treasury", treasury)]
        assert await _projection(stack) == live
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems


class TestFailingPartition:
    async def test_others_go_on_and_the_failure_is_recorded(self, stack: Settings) -> None:
        """A partition whose projection fails on every try (a trigger refuses one user's
        balance) does not hold up the others' balances; its failures are recorded, and once
        the cause is gone it catches up."""
        frozen, others = "frozen-user", [f"free-{i}" for i in range(12)]
        stuck = partition_for(frozen, stack.partitions)
        others = [u for u in others if partition_for(u, stack.partitions) != stuck]
        assert others
        await _execute(stack, _REFUSE_FROZEN_SQL)
        async with running_processor(stack), running_projector(stack), client_for(stack) as c:
            await send_all(c, [command("top_up", u, 7) for u in [frozen, *others]])
            await _wait_for(stack, "SELECT count(*) = $1 AS ok FROM balances", len(others))
            state = await fetch(
                stack, "SELECT partition, failures_in_a_row, last_error FROM"
                " projection_checkpoints WHERE failures_in_a_row > 0"
            )  # fmt: skip
            await _execute(stack, "DROP TRIGGER refuse_frozen ON balances")
            await wait_projected(stack)
        assert [(r["partition"], "CheckViolationError" in r["last_error"]) for r in state] == [
            (stuck, True)
        ]
        balances, _ = await _projection(stack)
        assert {b[0] for b in balances} == {frozen, *others}
        cleared = "SELECT max(failures_in_a_row) AS n FROM projection_checkpoints"
        assert (await fetch(stack, cleared))[0]["n"] == 0


_REFUSE_FROZEN_SQL = """
CREATE FUNCTION refuse_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation';
END;
$$;
CREATE TRIGGER refuse_frozen BEFORE INSERT OR UPDATE ON balances
    FOR EACH ROW WHEN (NEW.user_id = 'frozen-user') EXECUTE FUNCTION refuse_frozen();
"""


async def _execute(settings: Settings, sql: str) -> None:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _wait_for(settings: Settings, sql: str, *args: object) -> None:
    async def holds() -> bool:
        return bool((await fetch(settings, sql, *args))[0]["ok"])

    await eventually(holds, 30, sql)


class TestReplay:
    async def test_rebuild_from_scratch_is_identical_while_commands_flow(
        self, stack: Settings
    ) -> None:
        """A rebuild during live load swaps in a projection equal to the live one."""
        async with running_processor(stack), running_projector(stack), client_for(stack) as c:
            await send_all(c, _mixed_load(2000, 100, seed=4))
            await wait_projected(stack)
            before = await _projection(stack)
            entries = (await fetch(stack, "SELECT count(*) AS n FROM ledger_entries"))[0]["n"]
            flowing = asyncio.create_task(send_all(c, _mixed_load(1000, 50, seed=5)))
            assert stack.database_url
            conn = await asyncpg.connect(stack.database_url)
            try:
                applied = await rebuild(conn, from_scratch=True, progress=lambda n: None)
            finally:
                await conn.close()
            await flowing
            await wait_projected(stack)
        assert applied >= entries
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems
        after_balances, _ = await _projection(stack)
        assert set(before[0]) <= set(after_balances)  # the second load touched other users only
        assert len(after_balances) > len(before[0])


class TestVerify:
    async def test_clean_ledger_then_corrupted_rows_are_found(self, stack: Settings) -> None:
        """verify is clean on a good ledger and names a corrupted projection, ledger row and
        idempotency record."""
        async with running_processor(stack), running_projector(stack), client_for(stack) as c:
            await send_all(c, _mixed_load(300, 30, seed=6))
            await wait_projected(stack)
        assert all(n == 0 for n in (await audit(stack)).values())
        assert stack.database_url
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute("UPDATE balances SET balance = balance + 1 WHERE ctid IN"
                               " (SELECT ctid FROM balances LIMIT 1)")  # fmt: skip
            problems = await audit(stack)
            assert problems["each projected balance, paid part, held and debt equals the "
                            "ledger's (up to the checkpoints)"] == 1  # fmt: skip
            await conn.execute("UPDATE lots SET remaining = remaining + 1 WHERE ctid IN"
                               " (SELECT ctid FROM lots LIMIT 1)")  # fmt: skip
            problems = await audit(stack)
            assert problems["each account's open lots sum to its balance, and their paid part to"
                            " its paid part"] == 1  # fmt: skip
            assert problems["each credit's lot holds what it brought less what was taken, plus"
                            " what came back"] == 1  # fmt: skip
            # A superuser bypassing the append-only triggers, as an attacker or a bad script might.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("UPDATE ledger_entries SET amount = amount + 7 WHERE entry_id ="
                               " (SELECT min(entry_id) FROM ledger_entries)")  # fmt: skip
            await conn.execute("UPDATE processed_commands SET version = version + 1 WHERE ctid ="
                               " (SELECT min(ctid) FROM processed_commands"
                               "   WHERE status = 'accepted')")  # fmt: skip
        finally:
            await conn.close()
        problems = await audit(stack)
        assert problems["every transaction's entries sum to zero"] == 1
        assert problems["every asset's entries sum to zero"] == 1
        assert problems[
            "each accepted command records its user entry's balance, paid part, held, debt and "
            "version"
        ] == 1  # fmt: skip


class TestProjectorCrash:
    @pytest.mark.slow
    async def test_kill_9_mid_projection_loses_and_doubles_nothing(self, stack: Settings) -> None:
        """A projector killed mid-backlog and restarted ends exactly equal to the ledger."""
        async with running_processor(stack), client_for(stack) as c:
            await send_all(c, _mixed_load(20_000, 2000, seed=7), timeout_s=240)
        first = WalletProcess(stack, "projector")
        try:
            await _wait_for_checkpoints(stack)
            first.kill()
            partial = await fetch(stack, "SELECT sum(position) AS s FROM projection_checkpoints")
            second = WalletProcess(stack, "projector")
            try:
                await wait_projected(stack, timeout_s=120)
            finally:
                second.stop()
        finally:
            first.stop()
        assert partial[0]["s"] is not None
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems


async def _wait_for_checkpoints(settings: Settings) -> None:
    for _ in range(600):
        rows = await fetch(settings, "SELECT count(*) AS n FROM projection_checkpoints")
        if rows[0]["n"] > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the projector never moved a checkpoint")
