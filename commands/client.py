"""Publish wallet commands and await their replies.

Replies are at-least-once: the client keeps the first reply per `command_id` and ignores
repeats. It reads the reply topic from its current end, so it starts listening before it
publishes anything and can never miss its own replies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from foundation.errors import BrokerUnavailableError, ReplyTimeoutError, WalletError
from foundation.settings import Settings
from messaging.kafka import RecordBatches, make_consumer, make_producer, start_producer
from schemas.commands import Command
from schemas.replies import Reply

log = structlog.get_logger("wallet.client")
PENDING_MAX = 1_000_000


class WalletClient:
    def __init__(self, settings: Settings, reply_topic: str | None = None) -> None:
        self._settings = settings
        self.reply_topic = reply_topic or settings.replies_topic
        self._timeout_s = settings.kafka_timeout_ms / 1000
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._partition_counts: dict[str, int] = {}
        self._deliveries: list[asyncio.Future[Any]] = []  # batch sends not yet flushed

    async def __aenter__(self) -> WalletClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        producer = make_producer(self._settings)
        await start_producer(producer, self._settings)
        self._producer = producer
        self._consumer = make_consumer(self._settings, group_id=None)
        try:
            await asyncio.wait_for(self._consumer.start(), self._timeout_s)
            await asyncio.wait_for(self._listen_from_end(), self._timeout_s)
        except TimeoutError as exc:
            await self.stop()
            raise BrokerUnavailableError("broker did not answer", error=repr(exc)) from exc
        except BaseException:
            await self.stop()
            raise
        self._listener = asyncio.create_task(self._dispatch(), name="reply-listener")

    async def _listen_from_end(self) -> None:
        assert self._consumer is not None and self._producer is not None
        # The producer's look-up asks the broker for this topic (the consumer's cached
        # metadata only knows topics it has asked about, and it has asked about none).
        try:
            partitions = await self._producer.partitions_for(self.reply_topic)
        except KafkaError:
            partitions = set()
        if not partitions:
            raise WalletError(
                "reply topic does not exist; run `wallet topics`", topic=self.reply_topic
            )
        tps = [TopicPartition(self.reply_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve now: a lazy position could skip replies sent meanwhile
            await self._consumer.position(tp)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    async def _dispatch(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for record in records:
                    self._resolve(record.value)

    def _resolve(self, value: bytes | None) -> None:
        try:
            reply = orjson.loads(value or b"")
            future = self._pending.pop(reply["command_id"], None)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("unreadable reply ignored")
            return
        if future is not None and not future.done():
            future.set_result(reply)

    async def publish(self, command: Command) -> asyncio.Future[dict[str, Any]]:
        """Publish one command; the future resolves with its reply (a JSON object).

        The reply is addressed to the topic this client listens on, whatever the command said.
        """
        if command.reply_to != self.reply_topic:
            command = command.model_copy(update={"reply_to": self.reply_topic})
        return await self.publish_raw(
            command.user_id.encode("utf-8"), command.encode(), str(command.command_id)
        )

    async def publish_raw(
        self, key: bytes | None, value: bytes, command_id: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Publish bytes as they are (for other producers' payloads and hostile-input tests)."""
        assert self._producer is not None, "client not started"
        future = self.expect(command_id)
        await self._producer.send(self._settings.commands_topic, value, key)
        return future

    async def publish_many(
        self, records: Sequence[tuple[bytes, bytes, str]]
    ) -> list[asyncio.Future[dict[str, Any]]]:
        """Publish encoded commands `(key, value, command_id)` in record batches.

        Far cheaper per command than `publish_raw` (one future per batch, not per message):
        the load generator's way. `flush` waits for their delivery and raises its errors.
        """
        assert self._producer is not None, "client not started"
        futures = [self.expect(command_id) for _, _, command_id in records]
        batches = RecordBatches(self._producer, self._partition_counts)
        for key, value, _ in records:
            await batches.add(self._settings.commands_topic, key, value)
        # Keep only deliveries still running or failed: the list stays as long as what is in flight.
        self._deliveries = [d for d in self._deliveries if not d.done() or d.exception()]
        self._deliveries.extend(await batches.send())
        return futures

    def expect(self, command_id: str | None) -> asyncio.Future[dict[str, Any]]:
        """A future for the reply to `command_id`, however the command reaches the topic (this
        client, or another producer, a transactional one say, that names our reply topic)."""
        if len(self._pending) >= PENDING_MAX:
            raise WalletError("too many commands awaiting replies", pending=len(self._pending))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if command_id is not None:
            self._pending[command_id] = future
        return future

    async def broker_reachable(self) -> bool:
        """True when the broker answers a metadata request in time."""
        assert self._consumer is not None
        try:
            await asyncio.wait_for(self._consumer.topics(), self._timeout_s / 4)
        except (KafkaError, TimeoutError):
            return False
        return True

    async def flush(self) -> None:
        assert self._producer is not None
        await asyncio.wait_for(self._producer.flush(), self._timeout_s)
        deliveries, self._deliveries = self._deliveries, []
        await asyncio.wait_for(asyncio.gather(*deliveries), self._timeout_s)

    async def request(self, command: Command, timeout_s: float = 10.0) -> Reply:
        """Publish and wait for the reply, up to `timeout_s`."""
        future = await self.publish(command)
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self._pending.pop(str(command.command_id), None)
            raise ReplyTimeoutError(
                "no reply in time", command_id=str(command.command_id)
            ) from None
        return Reply.model_validate(reply)
