"""Transfers killed at each step: the processor exits (as kill -9 would) at a crash point of
the write path, on the first batch holding a step of the named type, and a fresh processor
takes over. Every transfer must still complete or be refused, each step once, no money made
or lost, and `wallet verify` clean. (The fault tests' load gives transfers too: broker and
PostgreSQL restarts under it are in test_broker.py and test_postgres.py.)"""

from __future__ import annotations

import asyncio

import pytest

from foundation.settings import Settings
from processor.crash_points import POINTS
from schemas.commands import Command
from tests.faults.crashes import crashed_then_resumed
from tests.integration.helpers import audit, client_for, command, fetch, send_all
from tests.integration.processes import WalletProcess
from tests.integration.test_transfers import apart

pytestmark = pytest.mark.slow

GIFTS = 12
# Each step at each point: the debit, the receiver's credit or refusal, the refund.
STEPS = [(point, step) for step in ("transfer", "transfer_in", "transfer_refund")
         for point in POINTS]  # fmt: skip


def gifts(users: list[str], nobody: str) -> list[Command]:
    """Gifts around a ring of players on different partitions, and to a player without a
    wallet (refused, refunded), interleaved."""
    ring = list(zip(users, users[1:] + users[:1], strict=True))
    sent = []
    for i in range(GIFTS):
        sender, receiver = ring[i % len(ring)]
        sent.append(command("transfer", sender, 10 + i, to_user_id=receiver, key=f"gift-{i}"))
        sent.append(command("transfer", sender, 1, to_user_id=nobody, key=f"lost-{i}"))
    return sent


class TestKilledAtEachStep:
    @pytest.mark.parametrize(("point", "step"), STEPS)
    async def test_each_transfer_ends_once(self, stack: Settings, point: str, step: str) -> None:
        """The processor dies at the crash point; its successor finishes every transfer: each
        completed or refused once, the balances the model's, verify clean."""
        *users, nobody = apart(stack, stack.partitions)
        sent = gifts(users, nobody)
        funds = [command("top_up", u, 1000) for u in users]
        replies = await crashed_then_resumed(stack, f"{point}:{step}", sent, funds)
        statuses = [r["transfer"]["status"] for r in replies]
        assert statuses == ["completed", "refused"] * GIFTS, statuses
        await _each_step_once(stack, sent)
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems


async def _each_step_once(settings: Settings, sent: list[Command]) -> None:
    """One debit per transfer, then one credit (completed) or one refusal and one refund."""
    rows = await fetch(settings, "SELECT transfer_id, type, status FROM processed_commands"
                       " WHERE transfer_id IS NOT NULL ORDER BY processed_at")  # fmt: skip
    steps: dict[object, list[tuple[str, str]]] = {}
    for r in rows:
        steps.setdefault(r["transfer_id"], []).append((r["type"], r["status"]))
    assert len(steps) == len(sent)
    completed = [("transfer", "accepted"), ("transfer_in", "accepted")]
    refused = [*completed[:1], ("transfer_in", "rejected"), ("transfer_refund", "accepted")]
    assert sorted(map(tuple, steps.values())) == sorted([tuple(completed)] * GIFTS
                                                        + [tuple(refused)] * GIFTS)  # fmt: skip
    totals = await fetch(settings, "SELECT user_id, sum(amount) AS n FROM ledger_entries"
                         " WHERE account_kind = 'user' GROUP BY user_id")  # fmt: skip
    assert sum(r["n"] for r in totals) == 1000 * len({c.user_id for c in sent})


class TestLostSteps:
    async def test_a_step_lost_with_the_log_is_sent_again(self, stack: Settings) -> None:
        """A debit committed and taken for published (as if the broker then lost the log it
        went to) is still credited: the transfer sweep sends its step again."""
        ana, bob = apart(stack, 2)
        crashing = WalletProcess(stack, env={"WALLET_CRASH_AT": "after_commit:transfer"})
        procs = [crashing]
        try:
            async with client_for(stack) as client:
                await send_all(client, [command("top_up", u, 100) for u in (ana, bob)])
                gift = await client.publish(command("transfer", ana, 30, to_user_id=bob))
                await client.flush()
                await asyncio.to_thread(crashing.proc.wait, 60)
                # Everything committed counts as published: the step is gone with "the log".
                await fetch(stack, "UPDATE outbox_positions SET published_generation = 1000000")
                procs.append(WalletProcess(stack, env={"WALLET_TRANSFER_RESEND_MS": "1000"}))
                reply = await asyncio.wait_for(gift, 60)
        finally:
            for proc in procs:
                proc.stop()
        assert reply["transfer"]["status"] == "completed"
        assert "transfer steps sent again" in procs[-1].log()
        problems = await audit(stack)
        assert all(n == 0 for n in problems.values()), problems
