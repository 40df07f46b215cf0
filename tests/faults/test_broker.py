"""Broker faults under load: a kill -9 and restart, and a stall (frozen past the session timeout).

Apache Kafka keeps its log on disk: killed and started again on the same folder, it loses
nothing, so nothing needs re-sending; a command is answered once, or twice (the same reply)
when its partition changed owners while the broker was away (see `assert_answered_once`).
Tansu keeps its logs in memory, so its restart loses every message on it: commands not yet
consumed, replies not yet read. The processors notice the shorter log and reset their positions
(recorded in `partition_resets`); what the load never got a reply for it sends again with the
same idempotency key, and nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from foundation.settings import Settings
from messaging.kafka import ensure_topics
from tests.faults.load import (
    account,
    assert_answered_once,
    gifts_credited,
    owner_epochs,
    under_load,
    workload,
)
from tests.integration.helpers import fetch
from tests.integration.processes import WalletProcess
from wallet.devstack import TansuBroker
from wallet.embedded_kafka import KafkaCluster

pytestmark = pytest.mark.slow
RESEND_AFTER_S = 8.0


class TestKafkaKilled:
    async def test_kill_9_and_restart_on_its_log(
        self, own_broker: tuple[KafkaCluster, Settings]
    ) -> None:
        """Kafka killed -9 under load and started on its log folder: no command lost, none
        re-sent by the load, each applied once, answered once unless its partition changed
        owners meanwhile (then at most twice, the same reply)."""
        broker, stack = own_broker
        if not isinstance(broker, KafkaCluster):
            pytest.skip("Tansu's log is in memory: see TestTansuRestart")
        # Clients wait out the outage (about 15 s: the kill, then the restart's log recovery)
        # instead of giving up on a send whose record may have landed.
        settings = stack.model_copy(update={"kafka_timeout_ms": 60_000})
        work = workload(6_000, 200, seed=10, reply_to=settings.replies_topic)
        procs = [WalletProcess(settings), WalletProcess(settings)]
        async with under_load(settings, work, 300, procs, answered_first=1_000,
                              send_timeout_s=90) as load:  # fmt: skip
            node = broker.nodes[0]
            epochs = await owner_epochs(settings)
            broker.stop_node(node, signal.SIGKILL)
            await asyncio.sleep(2)
            await asyncio.to_thread(broker.start_node, node)
            replies = await load.settle(timeout_s=240)  # never re-sends
            assert all(p.alive() for p in procs)
        resets = await fetch(settings, "SELECT count(*) AS n FROM partition_resets")
        assert resets[0]["n"] == 0, "the log survived: nothing may look replaced"
        repeats = await assert_answered_once(settings, work, epochs)
        audit = await account(settings, work, load, replies)
        print(audit.line(f"Kafka killed -9 and restarted on its log ({repeats} repeated)"))


@pytest.mark.tansu_only
class TestTansuRestart:
    async def test_restart_under_load(self, own_broker: tuple[TansuBroker, Settings]) -> None:
        """Producers and consumers reconnect on their own; lost commands are re-sent and
        applied once."""
        broker, settings = own_broker
        work = workload(6_000, 200, seed=8, reply_to=settings.replies_topic)
        resend = {"WALLET_TRANSFER_RESEND_MS": "2000"}  # gift steps lost with the log
        procs = [WalletProcess(settings, env=resend), WalletProcess(settings, env=resend)]
        async with under_load(settings, work, 300, procs, answered_first=1_000) as load:
            broker.stop()
            await asyncio.sleep(2)
            broker.start()  # same port, empty logs
            await ensure_topics(settings)
            replies = await load.settle(timeout_s=240, resend_after_s=RESEND_AFTER_S)
            await gifts_credited(settings, work, timeout_s=60)
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
