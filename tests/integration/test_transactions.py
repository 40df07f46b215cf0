"""Commands from transactional, idempotent and compressing producers, on Apache Kafka.

Java clients with a `transactional.id`, Kafka Streams and outbox relays produce in
transactions: only what they commit may move money, and the commit and abort markers they
leave in the log (offsets no consumer ever sees) must neither stall a partition nor reset it.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from commands.client import WalletClient
from foundation.settings import Settings
from messaging.kafka import make_producer, partition_for, security_options
from schemas.commands import Command
from tests.integration.helpers import balance, client_for, command, fetch, running_processor


@pytest.fixture(autouse=True)
def _kafka_only(on_tansu: bool) -> None:
    if on_tansu:
        pytest.skip("Tansu has no transactions nor idempotent producers")


def _producer(settings: Settings, **options: object) -> AIOKafkaProducer:
    """A producer as another team's service would configure it: Kafka's defaults (murmur2
    partitioner, key = user id), not the wallet's own client."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=settings.kafka_timeout_ms,
        **security_options(settings),
        **options,
    )


async def _send(producer: AIOKafkaProducer, settings: Settings, cmd: Command) -> None:
    await producer.send(settings.commands_topic, cmd.encode(), cmd.user_id.encode())


def _addressed(client: WalletClient, *commands: Command) -> list[Command]:
    return [c.model_copy(update={"reply_to": client.reply_topic}) for c in commands]


async def _processed(settings: Settings, cmd: Command) -> int:
    rows = await fetch(
        settings,
        "SELECT count(*) AS n FROM processed_commands WHERE command_id = $1",
        cmd.command_id,
    )
    return int(rows[0]["n"])


class TestTransactionalProducers:
    async def test_aborted_command_is_never_applied_or_answered(self, stack: Settings) -> None:
        """A command in an aborted transaction moves no money and gets no reply; the one
        committed after it does."""
        producer = _producer(stack, transactional_id=f"game-{uuid.uuid4().hex[:8]}")
        async with running_processor(stack), client_for(stack) as client:
            aborted, kept = _addressed(
                client, command("top_up", "tx-user", 500), command("top_up", "tx-user", 7)
            )
            never, answered = (
                client.expect(str(aborted.command_id)),
                client.expect(str(kept.command_id)),
            )
            await producer.start()
            try:
                await producer.begin_transaction()
                await _send(producer, stack, aborted)
                await producer.flush()  # the aborted record is in the log, then its marker
                await producer.abort_transaction()
                async with producer.transaction():
                    await _send(producer, stack, kept)
            finally:
                await producer.stop()
            reply = await asyncio.wait_for(answered, 60)
            await asyncio.sleep(1.0)  # time enough for a wrong reply to the aborted one
        assert reply["status"] == "accepted" and reply["balance"] == 7
        assert not never.done(), "an aborted command was answered"
        assert await _processed(stack, aborted) == 0
        assert await balance(stack, "tx-user") == 7

    async def test_open_transaction_waits_for_its_commit(self, stack: Settings) -> None:
        """A command in a transaction still open is not applied until the producer commits."""
        producer = _producer(stack, transactional_id=f"game-{uuid.uuid4().hex[:8]}")
        async with running_processor(stack), client_for(stack) as client:
            (pending,) = _addressed(client, command("top_up", "slow-tx", 11))
            answered = client.expect(str(pending.command_id))
            await producer.start()
            try:
                await producer.begin_transaction()
                await _send(producer, stack, pending)
                await producer.flush()
                await asyncio.sleep(2.0)
                assert not answered.done(), "applied before its transaction committed"
                assert await _processed(stack, pending) == 0
                await producer.commit_transaction()
            finally:
                await producer.stop()
            reply = await asyncio.wait_for(answered, 60)
        assert reply["status"] == "accepted" and reply["balance"] == 11

    async def test_hundreds_of_markers_neither_stall_nor_reset(self, stack: Settings) -> None:
        """300 one-command transactions (a third aborted) to one partition: every committed
        one is applied once, the stored position ends at the log's end past the last marker,
        and a new processor resumes there without a reset."""
        user = "marker-user"
        producer = _producer(stack, transactional_id=f"game-{uuid.uuid4().hex[:8]}")
        async with client_for(stack) as client:
            sent = _addressed(client, *(command("top_up", user, 1) for _ in range(300)))
            committed = [c for i, c in enumerate(sent) if i % 3 != 1]  # the last one commits
            replies = [client.expect(str(c.command_id)) for c in committed]
            async with running_processor(stack):
                await producer.start()
                try:
                    for i, cmd in enumerate(sent):
                        await producer.begin_transaction()
                        await _send(producer, stack, cmd)
                        if i % 3 == 1:
                            await producer.flush()
                            await producer.abort_transaction()
                        else:
                            await producer.commit_transaction()
                finally:
                    await producer.stop()
                await asyncio.wait_for(asyncio.gather(*replies), 120)
            partition = partition_for(user, stack.partitions)
            log_end = await _log_end(stack, partition)
            assert log_end >= 2 * len(sent), "every transaction left a record and a marker"
            state = await _partition_state(stack, partition)
            assert state["next_offset"] == log_end  # past the trailing commit marker
            assert state["last_offset"] < log_end - 1
            (after,) = _addressed(client, command("top_up", user, 1))
            async with running_processor(stack):  # claims, checks the last record, resumes
                reply = await client.request(after, timeout_s=60)
        assert reply.status == "accepted"
        assert await balance(stack, user) == len(committed) + 1
        resets = await fetch(stack, "SELECT count(*) AS n FROM partition_resets")
        assert resets[0]["n"] == 0
        aborted = [c for c in sent if c not in committed]
        assert [await _processed(stack, c) for c in aborted] == [0] * len(aborted)


class TestIdempotentProducers:
    async def test_wallet_producers_are_idempotent_by_default(self, stack: Settings) -> None:
        """The wallet's producers ask the broker for a producer id (idempotence), as the
        default settings say, and deliver with it."""
        assert Settings(_env_file=None).producer_idempotence  # type: ignore[call-arg]
        producer = make_producer(stack)
        await producer.start()
        try:
            await producer.send_and_wait(stack.events_topic, b"{}", b"probe")
            manager = producer._txn_manager  # no public accessor for the producer id
            assert manager is not None and manager.producer_id >= 0
        finally:
            await producer.stop()


class TestCompressedBatches:
    @pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
    async def test_compressed_commands_are_consumed(self, stack: Settings, codec: str) -> None:
        """Record batches compressed as Java clients and librdkafka send them are decoded
        and applied."""
        producer = _producer(stack, compression_type=codec, linger_ms=50)
        async with running_processor(stack), client_for(stack) as client:
            cmds = _addressed(
                client, *(command("top_up", f"{codec}-{i % 5}", 3) for i in range(50))
            )
            replies = [client.expect(str(c.command_id)) for c in cmds]
            await producer.start()
            try:
                for cmd in cmds:
                    await _send(producer, stack, cmd)
                await producer.flush()
            finally:
                await producer.stop()
            done = await asyncio.wait_for(asyncio.gather(*replies), 60)
        assert {r["status"] for r in done} == {"accepted"}
        assert await balance(stack, f"{codec}-0") == 30


async def _log_end(settings: Settings, partition: int) -> int:
    tp = TopicPartition(settings.commands_topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, **security_options(settings)
    )
    await consumer.start()
    try:
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def _partition_state(settings: Settings, partition: int) -> dict[str, int]:
    rows = await fetch(
        settings,
        "SELECT next_offset, last_offset FROM partition_state WHERE topic = $1 AND partition = $2",
        settings.commands_topic,
        partition,
    )
    return dict(rows[0])
