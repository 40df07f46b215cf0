"""Broker faults under load: a restart, and a stall (the broker frozen past the session timeout).

The embedded broker keeps its logs in memory, so its restart loses every message on it:
commands not yet consumed, replies not yet read. The processors notice the shorter log and
reset their positions (recorded in `partition_resets`); what the load never got a reply for it
sends again with the same idempotency key, and nothing is applied twice. Kafka proper keeps its
logs on disk, replicated: there a restart loses nothing and nothing needs re-sending.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.faults.load import account, under_load, workload
from tests.integration.helpers import fetch
from tests.integration.processes import WalletProcess
from wallet.devstack import TansuBroker
from wallet.kafka import ensure_topics
from wallet.settings import Settings

pytestmark = pytest.mark.slow
RESEND_AFTER_S = 8.0


class TestBrokerRestart:
    async def test_restart_under_load(self, own_broker: tuple[TansuBroker, Settings]) -> None:
        """Producers and consumers reconnect on their own; lost commands are re-sent and
        applied once."""
        broker, settings = own_broker
        work = workload(6_000, 200, seed=8, reply_to=settings.replies_topic)
        procs = [WalletProcess(settings), WalletProcess(settings)]
        async with under_load(settings, work, 300, procs, answered_first=1_000) as load:
            broker.stop()
            await asyncio.sleep(2)
            broker.start()  # same port, empty logs
            await ensure_topics(settings)
            replies = await load.settle(timeout_s=240, resend_after_s=RESEND_AFTER_S)
            assert all(p.alive() for p in procs)
        resets = await fetch(settings, "SELECT count(*) AS n FROM partition_resets")
        assert resets[0]["n"] >= 1, "no processor noticed the replaced log"
        audit = await account(settings, work, load, replies)
        print(audit.line("broker restarted (in-memory logs lost)"))


class TestBrokerStall:
    async def test_frozen_past_the_session_timeout(
        self, own_broker: tuple[TansuBroker, Settings]
    ) -> None:
        """A broker frozen (SIGSTOP) past the session timeout: every client waits, the group
        rebalances, fencing keeps the ledger exact."""
        broker, settings = own_broker
        work = workload(6_000, 200, seed=9, reply_to=settings.replies_topic)
        procs = [WalletProcess(settings), WalletProcess(settings)]
        assert broker.proc is not None
        async with under_load(settings, work, 300, procs, answered_first=1_000) as load:
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(settings.session_timeout_ms / 1000 + 2)
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            replies = await load.settle(timeout_s=240, resend_after_s=RESEND_AFTER_S)
            assert all(p.alive() for p in procs)
        audit = await account(settings, work, load, replies)
        print(audit.line("broker frozen past the session timeout"))
