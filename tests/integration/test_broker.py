"""The embedded broker: pinned compatibility facts, and surviving its in-memory log being lost."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from foundation.settings import Settings
from messaging.kafka import ensure_topics, make_consumer
from tests.integration.helpers import balance, client_for, command, fetch, running_processor
from tests.integration.processes import run_wallet
from wallet.devstack import TansuBroker

pytestmark = pytest.mark.tansu_only


class TestTansuCompatibility:
    """Facts about Tansu 0.6 the code must not depend on; a failure here means Tansu changed."""

    async def test_end_offsets_lag_behind_the_fetch_highwater(self, stack: Settings) -> None:
        """ListOffsets "latest" answers the last batch's base + 1; a fetch's highwater is right."""
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=50)
        await producer.start()
        try:
            futures = [await producer.send(stack.events_topic, b"x", b"k") for _ in range(10)]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        partition = (await futures[0]).partition
        tp = TopicPartition(stack.events_topic, partition)
        consumer = make_consumer(stack)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            await consumer.getmany(tp, timeout_ms=3000)
            highwater = consumer.highwater(tp)
            end = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
        assert highwater == 10
        assert end < highwater, "Tansu answers ListOffsets right now: see status._log_ends"

    async def test_idempotent_producer_cannot_start(self, stack: Settings) -> None:
        """InitProducerId fails, which is why producer idempotence is a setting."""
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.kafka_bootstrap,
            enable_idempotence=True,
            request_timeout_ms=5000,
        )
        with pytest.raises(Exception):  # noqa: B017 - any failure: the point is that it fails
            await asyncio.wait_for(producer.start(), 15)
        await producer.stop()


class TestReplacedLog:
    async def test_broker_restart_is_detected_and_new_commands_processed(
        self, own_broker: tuple[TansuBroker, Settings]
    ) -> None:
        """After the in-memory log is lost, the reset is recorded and no new command is skipped."""
        broker, settings = own_broker
        async with running_processor(settings):
            async with client_for(settings) as client:
                for i in range(5):
                    await client.request(command("top_up", "phoenix", 10, key=f"before-{i}"))
            broker.stop()
            broker.start()  # same port, empty log: offsets begin again at 0
            await ensure_topics(settings)
            async with client_for(settings) as client:
                replies = [
                    await client.request(command("top_up", "phoenix", 1, key=f"after-{i}"), 90)
                    for i in range(3)
                ]
        assert [r.status for r in replies] == ["accepted"] * 3
        assert await balance(settings, "phoenix") == 53
        resets = await fetch(settings, "SELECT reason, old_next_offset FROM partition_resets")
        assert len(resets) >= 1 and resets[0]["old_next_offset"] == 5


class TestIdempotenceRefused:
    async def test_processor_exits_naming_the_setting(self, stack: Settings) -> None:
        """A processor asked for idempotent producers on a broker that cannot initialise them
        exits with one error naming WALLET_PRODUCER_IDEMPOTENCE instead of hanging."""
        asking = stack.model_copy(update={"producer_idempotence": True})
        done = await asyncio.to_thread(
            run_wallet, asking, "processor", env={"WALLET_KAFKA_TIMEOUT_MS": "3000"}
        )
        assert done.returncode != 0
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "WALLET_PRODUCER_IDEMPOTENCE=false" in errors[0], done.stderr
        assert "Traceback" not in done.stderr
