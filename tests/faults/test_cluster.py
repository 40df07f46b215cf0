"""A replicated Kafka cluster (three KRaft nodes, replication 3, min.insync.replicas 2) losing
the leader of the commands partitions to kill -9 under load.

Acknowledged records are on at least two nodes (acks=all, min ISR 2), so a new leader has
every command and every reply the dead one acknowledged; idempotent producers retry their
unacknowledged batches to it without duplicates.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from foundation.settings import Settings
from messaging.kafka import ensure_topics
from tests.faults.load import account, assert_answered_once, owner_epochs, under_load, workload
from tests.integration.helpers import fetch
from tests.integration.processes import WalletProcess
from wallet.embedded_kafka import KafkaCluster

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(stack: Settings, on_tansu: bool) -> AsyncIterator[tuple[KafkaCluster, Settings]]:
    """Three nodes on this machine, with the wallet's topics replicated on all of them."""
    if on_tansu:
        pytest.skip("needs Apache Kafka: Tansu has no replication")
    folder = Path(tempfile.mkdtemp(prefix="wallet-cluster-"))
    nodes = KafkaCluster(folder, size=3, heap_mb=512)
    try:
        bootstrap = await asyncio.to_thread(nodes.start)
        settings = stack.model_copy(
            update={
                "kafka_bootstrap": bootstrap,
                "topic_replication_factor": 3,
                "topic_min_insync_replicas": 2,
                # Clients wait out the failover instead of giving up on a send that may land.
                "kafka_timeout_ms": 60_000,
            }
        )
        await ensure_topics(settings)  # returns once every partition has a leader
        yield nodes, settings
    finally:
        await asyncio.to_thread(nodes.stop)
        shutil.rmtree(folder, ignore_errors=True)


async def _leaders(settings: Settings) -> Counter[int]:
    """How many commands partitions each node leads."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await asyncio.wait_for(admin.start(), 10)
    try:
        (described,) = await asyncio.wait_for(admin.describe_topics([settings.commands_topic]), 10)
    finally:
        await admin.close()
    return Counter(p["leader"] for p in described["partitions"])


class TestLeaderKilled:
    async def test_kill_9_of_the_commands_leader(
        self, cluster: tuple[KafkaCluster, Settings]
    ) -> None:
        """The node leading most commands partitions dies under load: nothing is lost or
        doubled, nothing is re-sent, every command is answered once (twice at most, the same
        reply, if its partition changed owners meanwhile)."""
        nodes, settings = cluster
        work = workload(6_000, 200, seed=11, reply_to=settings.replies_topic)
        procs = [WalletProcess(settings), WalletProcess(settings)]
        async with under_load(settings, work, 300, procs, answered_first=1_000,
                              send_timeout_s=90) as load:  # fmt: skip
            leader_id, led = (await _leaders(settings)).most_common(1)[0]
            victim = next(n for n in nodes.nodes if n.node_id == leader_id)
            epochs = await owner_epochs(settings)
            nodes.stop_node(victim, signal.SIGKILL)
            replies = await load.settle(timeout_s=240)  # never re-sends
            assert all(p.alive() for p in procs)
            assert leader_id not in await _leaders(settings), "no new leaders elected"
        resets = await fetch(settings, "SELECT * FROM partition_resets")
        assert not resets, [dict(r) for r in resets]
        repeats = await assert_answered_once(settings, work, epochs)
        audit = await account(settings, work, load, replies)
        print(
            audit.line(
                f"leader of {led} of 4 commands partitions killed (3 nodes, min ISR 2,"
                f" {repeats} repeated)"
            )
        )
