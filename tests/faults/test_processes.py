"""Faults in the wallet's own processes, under load: kill -9 (processor, relay, projector),
a processor frozen past its session timeout (a zombie), members joining and leaving."""

from __future__ import annotations

import asyncio
import random

import pytest

from foundation.settings import Settings
from tests.faults.load import account, under_load, workload
from tests.integration.helpers import fetch, wait_projected
from tests.integration.processes import WalletProcess

pytestmark = pytest.mark.slow

_BACKLOG_SQL = "SELECT count(*) AS n FROM unpublished_messages"


class TestProcessorKills:
    async def test_twenty_kill_9s_among_three_processors(self, stack: Settings) -> None:
        """kill -9 of a random processor 20 times under load: every command once, all replied."""
        work = workload(12_000, 300, seed=1, reply_to=stack.replies_topic)
        rng = random.Random(11)
        procs = [WalletProcess(stack) for _ in range(3)]
        async with under_load(stack, work, 400, procs) as load:
            for _ in range(20):
                await asyncio.sleep(rng.uniform(0.2, 1.8))
                victim = rng.randrange(len(procs))
                procs[victim].kill()
                procs[victim] = WalletProcess(stack)
            assert load.published < len(work.commands), "the kills came after the load"
            replies = await load.settle(timeout_s=300)
        audit = await account(stack, work, load, replies)
        print(audit.line("kill -9 of a processor, 20 times, 3 processors"))

    async def test_relay_killed_with_replies_unpublished(self, stack: Settings) -> None:
        """kill -9 while committed replies wait in the outbox; the successor publishes them."""
        work = workload(6_000, 200, seed=2, reply_to=stack.replies_topic)
        procs = [WalletProcess(stack)]
        async with under_load(stack, work, 500, procs, answered_first=300) as load:
            backlog = await _wait_backlog(stack, timeout_s=30)
            procs[0].kill()
            procs.append(WalletProcess(stack))
            replies = await load.settle(timeout_s=240)
        audit = await account(stack, work, load, replies)
        print(audit.line(f"kill -9 of the relay with {backlog} replies unpublished"))


async def _wait_backlog(settings: Settings, timeout_s: float) -> int:
    """Poll until some committed reply waits for the relay."""
    async with asyncio.timeout(timeout_s):
        while True:
            rows = await fetch(settings, _BACKLOG_SQL)
            if rows[0]["n"] > 0:
                return int(rows[0]["n"])
            await asyncio.sleep(0.002)


class TestZombie:
    async def test_frozen_past_session_timeout_then_thawed(self, stack: Settings) -> None:
        """A processor frozen (SIGSTOP) past its session loses its partitions; thawed, it is
        fenced and the ledger stays exact."""
        work = workload(8_000, 200, seed=3, reply_to=stack.replies_topic)
        procs = [WalletProcess(stack), WalletProcess(stack)]
        async with under_load(stack, work, 400, procs) as load:
            procs[0].pause()
            await asyncio.sleep(stack.session_timeout_ms / 1000 + 4)
            procs[0].resume()
            replies = await load.settle(timeout_s=240)
            assert procs[0].alive(), "the thawed processor died instead of rejoining"
        owners = await fetch(stack, "SELECT max(owner_epoch) AS e FROM partition_state")
        assert owners[0]["e"] >= 2, "the frozen member's partitions were never taken over"
        audit = await account(stack, work, load, replies)
        print(audit.line("processor frozen past its session timeout, then thawed"))


class TestScaleOut:
    async def test_two_then_three_processors_one_killed(self, stack: Settings) -> None:
        """Members join and die while commands flow; every effect happens once."""
        work = workload(8_000, 300, seed=4, reply_to=stack.replies_topic)
        procs = [WalletProcess(stack), WalletProcess(stack)]
        async with under_load(stack, work, 400, procs, answered_first=1_000) as load:
            procs.append(WalletProcess(stack))  # a third member joins mid-flow
            await load.wait_answered(3_000, timeout_s=120)
            procs[0].kill()  # one member dies mid-flow
            replies = await load.settle(timeout_s=240)
        audit = await account(stack, work, load, replies)
        print(audit.line("a third processor joins, then one is killed"))


class TestProjectorKills:
    async def test_projector_killed_mid_batch_three_times(self, stack: Settings) -> None:
        """A projector killed -9 three times while it catches up under load ends equal to the
        ledger (`wallet verify` compares every projected balance)."""
        work = workload(8_000, 2_000, seed=5, reply_to=stack.replies_topic)
        rng = random.Random(5)
        procs = [WalletProcess(stack)]
        async with under_load(stack, work, 500, procs, answered_first=3_000) as load:
            for _ in range(3):  # a backlog to project: the projector starts late
                procs.append(WalletProcess(stack, "projector"))
                await asyncio.sleep(rng.uniform(1.5, 3.0))
                procs[-1].kill()
            procs.append(WalletProcess(stack, "projector"))
            replies = await load.settle(timeout_s=240)
            await wait_projected(stack, timeout_s=120)
        checkpoints = await fetch(stack, "SELECT count(*) AS n FROM projection_checkpoints")
        assert checkpoints[0]["n"] == stack.partitions
        audit = await account(stack, work, load, replies)
        print(audit.line("kill -9 of the projector, 3 times, mid-batch"))
