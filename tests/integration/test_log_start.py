"""A commands log whose start moved past the last processed record: what retention does to a
partition idle for longer than `retention.ms` (Kafka may then delete every segment)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from foundation.settings import Settings
from messaging.kafka import partition_for, security_options
from tests.integration.helpers import balance, client_for, command, fetch, running_processor


@pytest.fixture(autouse=True)
def _kafka_only(on_tansu: bool) -> None:
    if on_tansu:
        pytest.skip("Tansu cannot delete records")


async def _delete_up_to(settings: Settings, tp: TopicPartition, offset: int) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **security_options(settings)
    )
    await asyncio.wait_for(admin.start(), 10)
    try:
        await asyncio.wait_for(admin.delete_records({tp: RecordsToDelete(offset)}), 10)
    finally:
        await admin.close()


class TestLogStartPastLastRecord:
    async def test_new_owner_carries_on_without_a_reset(self, stack: Settings) -> None:
        """Every processed record deleted from the log: the next owner cannot re-read its last
        record, sees the log still reaches its position, and goes on with no reset."""
        user = "idle-player"
        tp = TopicPartition(stack.commands_topic, partition_for(user, stack.partitions))
        async with client_for(stack) as client:
            async with running_processor(stack):
                for amount in (5, 6, 7):
                    await client.request(command("top_up", user, amount), timeout_s=60)
            (state,) = await fetch(
                stack,
                "SELECT next_offset FROM partition_state WHERE topic = $1 AND partition = $2",
                tp.topic,
                tp.partition,
            )
            await _delete_up_to(stack, tp, state["next_offset"])
            async with running_processor(stack):  # claims: the record it would check is gone
                reply = await client.request(command("top_up", user, 1), timeout_s=60)
        assert reply.status == "accepted" and reply.balance == 19
        assert await balance(stack, user) == 19
        resets = await fetch(stack, "SELECT count(*) AS n FROM partition_resets")
        assert resets[0]["n"] == 0
