"""Crashes and scale-out under load: exactly one ledger effect per command, a reply for each."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest

from schemas.commands import Command
from tests.integration.helpers import asset_sums, client_for, command, fetch
from tests.integration.processes import WalletProcess
from wallet.settings import Settings

pytestmark = pytest.mark.slow


def _workload(count: int, users: int, seed: int) -> tuple[list[Command], dict[str, int]]:
    """Opening top-ups, then small top-ups and spends that can never overdraw: an exact model."""
    rng = random.Random(seed)
    names = [f"player-{seed}-{i}" for i in range(users)]
    commands = [command("top_up", u, 1000) for u in names]
    expected = dict.fromkeys(names, 1000)
    while len(commands) < count:
        user = rng.choice(names)
        if rng.random() < 0.5:
            amount = rng.randint(1, 10)
            commands.append(command("top_up", user, amount))
            expected[user] += amount
        else:
            commands.append(command("spend", user, 1))
            expected[user] -= 1
    return commands, expected


async def _publish(client: Any, commands: list[Command]) -> list[asyncio.Future[Any]]:
    futures = [await client.publish(c) for c in commands]
    await client.flush()
    return futures


async def _wait_replies(
    futures: list[asyncio.Future[Any]], at_least: int, timeout_s: float
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while sum(f.done() for f in futures) < at_least:
        assert asyncio.get_running_loop().time() < deadline, "replies stopped coming"
        await asyncio.sleep(0.05)


async def _assert_exactly_once(
    stack: Settings, commands: list[Command], expected: dict[str, int], replies: list[Any]
) -> None:
    assert len(replies) == len(commands)
    assert all(r["status"] == "accepted" for r in replies)
    rows = await fetch(stack, "SELECT count(*) AS n FROM processed_commands")
    assert rows[0]["n"] == len(commands)
    rows = await fetch(stack, "SELECT count(*) AS n FROM ledger_entries")
    assert rows[0]["n"] == 2 * len(commands)
    balances = await fetch(
        stack,
        "SELECT DISTINCT ON (user_id) user_id, balance_after FROM ledger_entries"
        " WHERE account_kind = 'user' ORDER BY user_id, version DESC",
    )
    assert {r["user_id"]: r["balance_after"] for r in balances} == expected
    assert await asset_sums(stack) == {"GOLD": 0}


class TestCrash:
    async def test_kill_9_mid_load_loses_and_doubles_nothing(self, stack: Settings) -> None:
        """kill -9 a processor during 20,000 commands; its successor finishes exactly once."""
        commands, expected = _workload(20_000, 500, seed=1)
        first = WalletProcess(stack)
        second = None
        try:
            async with client_for(stack) as client:
                futures = await _publish(client, commands)
                await _wait_replies(futures, 3_000, timeout_s=120)
                first.kill()
                done_at_kill = sum(f.done() for f in futures)
                second = WalletProcess(stack)
                replies = await asyncio.wait_for(asyncio.gather(*futures), 240)
        finally:
            first.stop()
            if second is not None:
                second.stop()
        assert done_at_kill < len(commands), "the kill came too late to test anything"
        await _assert_exactly_once(stack, commands, expected, replies)


class TestScaleOut:
    async def test_two_then_three_processors_one_stopped(self, stack: Settings) -> None:
        """Members join and leave the group while commands flow; every effect happens once."""
        commands, expected = _workload(12_000, 400, seed=2)
        waves = [commands[:400], commands[400:4000], commands[4000:8000], commands[8000:]]
        procs = [WalletProcess(stack), WalletProcess(stack)]
        try:
            async with client_for(stack) as client:
                futures = await _publish(client, waves[0])
                await _wait_replies(futures, len(futures), timeout_s=120)
                futures += await _publish(client, waves[1])
                procs.append(WalletProcess(stack))  # a third member joins mid-flow
                await _wait_replies(futures, len(futures) - 1000, timeout_s=120)
                futures += await _publish(client, waves[2])
                procs[0].kill()  # one member dies mid-flow
                futures += await _publish(client, waves[3])
                replies = await asyncio.wait_for(asyncio.gather(*futures), 240)
        finally:
            for proc in procs:
                proc.stop()
        owners = await fetch(stack, "SELECT max(owner_epoch) AS e FROM partition_state")
        assert owners[0]["e"] >= 2, "no rebalance happened"
        await _assert_exactly_once(stack, commands, expected, replies)
        per_user: dict[str, int] = defaultdict(int)
        for r in replies:
            per_user[r["user_id"]] += 1
        assert sum(per_user.values()) == len(commands)
