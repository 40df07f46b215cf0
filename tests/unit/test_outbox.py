"""The relay's retries: only the record batches that failed are sent again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder

from foundation.settings import Settings
from processor.outbox import OutboxPublisher, PublishJob
from storage.event_store import OutboxMessage
from tests.unit.standins import TOPIC, FlakyStore

SETTINGS = Settings(retry_backoff_max_ms=100, events_topic="unit.events",
                    replies_topic="unit.replies")  # fmt: skip


@dataclass
class _Metadata:
    topics: list[tuple[int, str]]


@dataclass
class _Client:
    topics: list[str]

    def get_random_node(self) -> int:
        return 0

    async def send(self, node: int, request: object) -> _Metadata:
        return _Metadata([(0, topic) for topic in self.topics])


@dataclass
class ProducerStandIn:
    """Takes record batches; fails the first one sent to `fail_topic`, acknowledges the rest."""

    fail_topic: str
    refuse: bool = False  # refuse the batch at send_batch (raise) instead of failing its future
    client: _Client = field(default_factory=lambda: _Client(["unit.replies", "unit.events"]))
    delivered: list[tuple[str, int, int]] = field(default_factory=list)  # topic, partition, n
    failures: int = 0

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16_384, 0, is_transactional=False)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        if topic == self.fail_topic and not self.failures:
            self.failures += 1
            if self.refuse:
                raise KafkaTimeoutError()
            future.set_exception(KafkaTimeoutError())
        else:
            self.delivered.append((topic, partition, batch.record_count()))
            future.set_result(None)
        return future


def _messages(count: int) -> list[OutboxMessage]:
    return [OutboxMessage(offset, 0, f"user-{offset}".encode(), "unit.replies", b"{}", b"{}", None)
            for offset in range(count)]  # fmt: skip


class TestRetries:
    @pytest.mark.parametrize("refuse", [False, True], ids=["delivery fails", "send refused"])
    async def test_a_failed_batch_alone_is_sent_again(self, refuse: bool) -> None:
        """When one batch of a round fails (its delivery, or the producer refusing to take
        it), its records are sent again and the batches that landed are not: every reply and
        event is delivered exactly once."""
        store = FlakyStore()
        epoch = (await store.claim_partition(TOPIC, 0, "me")).epoch
        producer = ProducerStandIn(fail_topic="unit.events", refuse=refuse)
        relay = OutboxPublisher(producer, store, SETTINGS)  # type: ignore[arg-type]
        await relay.submit(PublishJob(TOPIC, 0, epoch, _messages(40)))
        running = asyncio.create_task(relay.run())
        await asyncio.wait_for(relay.drain(), 10)
        assert not running.done(), running.exception()
        running.cancel()
        per_topic: dict[str, int] = {}
        for topic, _, count in producer.delivered:
            per_topic[topic] = per_topic.get(topic, 0) + count
        assert producer.failures == 1
        assert per_topic == {"unit.replies": 40, "unit.events": 40}
        assert (await store.claim_partition(TOPIC, 0, "next")).published_offset == 40

    async def test_alerts_go_to_the_alerts_topic(self) -> None:
        """A message's alert is published to the alerts topic (retried like the rest when
        its batch fails), beside its reply and event."""
        store = FlakyStore()
        epoch = (await store.claim_partition(TOPIC, 0, "me")).epoch
        producer = ProducerStandIn(fail_topic=SETTINGS.alerts_topic)
        relay = OutboxPublisher(producer, store, SETTINGS)  # type: ignore[arg-type]
        alerted = [replace(m, alert_value=b"{}") if m.source_offset % 2 else m
                   for m in _messages(10)]  # fmt: skip
        await relay.submit(PublishJob(TOPIC, 0, epoch, alerted))
        running = asyncio.create_task(relay.run())
        await asyncio.wait_for(relay.drain(), 10)
        running.cancel()
        alerts = sum(n for topic, _, n in producer.delivered if topic == SETTINGS.alerts_topic)
        assert producer.failures == 1 and alerts == 5
