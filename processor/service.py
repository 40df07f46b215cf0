"""The processor process: one consumer-group member running a worker per assigned partition.

Each step fetches what is ready (bounded by `batch_size_max`), then commits the healthy
partitions' batches together in one transaction (a failing or narrowing partition's alone,
see processor.committer), and hands the outbox rows to the relay.
Batches grow with load on their own: under load a fetch returns many records at once; when
idle, `fetch_wait_ms` bounds how long a lone command waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from foundation import metrics
from foundation.settings import Settings
from messaging.kafka import make_consumer, make_producer, start_producer
from processor.expiry_sweep import ExpirySweep
from processor.intake import IntakeRules
from processor.outbox import OutboxPublisher
from processor.steps import Steps
from processor.transfer_sweep import TransferSweep
from processor.worker import WorkerConfig
from storage.event_store import EventStore

log = structlog.get_logger("wallet.processor")


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Processor:
    def __init__(self, settings: Settings, store: EventStore, owner: str | None = None) -> None:
        self._settings = settings
        self._store = store
        forbidden = {settings.commands_topic, settings.events_topic, settings.dlq_topic,
                     settings.alerts_topic}  # fmt: skip
        self._config = WorkerConfig(
            owner=owner or owner_name(),
            # The setting bounds the whole process: a process that owns every partition holds
            # at most that many accounts (about 350 bytes each), fewer partitions fewer.
            balance_cache_max=max(1, settings.balance_cache_max // settings.partitions),
            rules=IntakeRules(
                partitions=settings.partitions,
                command_bytes_max=settings.command_bytes_max,
                forbidden_reply_topics=frozenset(forbidden),
                reply_topic_patterns=settings.reply_topic_patterns,
            ),
            monitors_reload_ms=settings.monitors_reload_ms,
        )
        self._steps: Steps | None = None
        self._publisher: OutboxPublisher | None = None
        self._relay: asyncio.Task[None] | None = None
        self._joined = False  # the consumer has started: joined its group

    @property
    def owner(self) -> str:
        return self._config.owner

    def health(self) -> dict[str, Any] | None:
        """For /health: None until the group is joined, or once the relay has died."""
        if not self._joined or self._relay is None or self._relay.done():
            return None
        assert self._steps is not None
        owned = self._steps.partitions.workers
        return {"owner": self.owner, "partitions": sorted(tp.partition for tp in owned)}

    async def run(self, stop: asyncio.Event) -> None:
        """Process until `stop` is set, then leave the group cleanly."""
        timeout_s = self._settings.kafka_timeout_ms / 1000
        producer = make_producer(self._settings)
        await start_producer(producer, self._settings)
        self._publisher = OutboxPublisher(producer, self._store, self._settings)
        relay = asyncio.create_task(self._publisher.run(), name="outbox-relay")
        self._relay = relay
        consumer = make_consumer(
            self._settings,
            group_id=self._settings.consumer_group,
            auto_offset_reset="none",  # never jump silently: a bad offset is handled below
            max_poll_interval_ms=2 * self._settings.session_timeout_ms + 30_000,
        )
        self._steps = Steps(self._store, self._config, self._settings, consumer, self._publisher)
        consumer.subscribe([self._settings.commands_topic], listener=_Rebalance(self))
        # Joining waits for a dead member's session to expire and the group to rebalance.
        join_timeout_s = timeout_s + 4 * self._settings.session_timeout_ms / 1000
        await asyncio.wait_for(consumer.start(), join_timeout_s)
        self._joined = True
        log.info("processor started", owner=self.owner, topic=self._settings.commands_topic)
        sweeping = asyncio.create_task(
            ExpirySweep(self._store, producer, self._settings, self._owned).run(),
            name="expiry-sweep",
        )
        resending = asyncio.create_task(
            TransferSweep(self._store, producer, self._settings, self._owned).run(),
            name="transfer-sweep",
        )
        try:
            await self._until_stopped(stop, (relay, sweeping, resending), timeout_s)
        finally:
            self._joined = False
            self._steps.close()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._publisher.drain(), timeout_s)
            finally:  # a failure of the relay's (a bug) still raises, after the clean-up
                for task in (relay, sweeping, resending):
                    task.cancel()
                await asyncio.gather(relay, sweeping, resending, return_exceptions=True)
                try:
                    await self._publisher.close()
                finally:
                    await self._stop_clients((consumer, producer), timeout_s)

    async def _stop_clients(self, clients: tuple[Any, ...], timeout_s: float) -> None:
        # Bounded: a broker that does not answer must not keep the process from exiting.
        for client in clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.stop(), timeout_s)
        log.info("processor stopped", owner=self.owner)

    async def _until_stopped(
        self, stop: asyncio.Event, background: tuple[asyncio.Task[None], ...], timeout_s: float
    ) -> None:
        """Step until `stop` is set.

        A step still waiting when it is set (on a full outbox queue while the broker is away,
        say) gets `timeout_s` to finish and is then cancelled. Nothing is lost by that: what it
        did not commit, the partition's next owner fetches again from the stored offset, and
        what it committed but did not publish is republished from the outbox.

        The relay and the sweeps never end on their own; if one does, it failed, and the
        process stops with its error (instead of, for the relay, committing batches whose
        replies nobody would publish).
        """
        assert self._steps is not None
        steps = self._steps
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                step = asyncio.ensure_future(steps.step())
                await asyncio.wait({step, stopping, *background},
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                for task in background:
                    if task.done():
                        step.cancel()
                        await task  # raises the task's error
                        raise AssertionError(f"{task.get_name()} ended")
                if step.done():
                    await step  # raises what the step raised
                    continue
                try:
                    await asyncio.wait_for(step, timeout_s)
                except TimeoutError:
                    log.error("a step did not finish after stop; cancelled", owner=self.owner)
        finally:
            stopping.cancel()

    def _owned(self) -> list[int]:
        """The partitions this process owns now (the expiry sweep's to sweep)."""
        if self._steps is None:
            return []
        return [tp.partition for tp in self._steps.partitions.workers]

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        metrics.REBALANCES.labels("assigned").inc()
        assert self._steps is not None
        await self._steps.assign(partitions)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Give the partitions up, once what they committed is published (bounded).

        Why wait for the relay: the next owner (this process again, often, after a
        coordinator failover) republishes everything past the published watermark. Replies
        still queued here would go out twice; published first, they go out once.
        """
        metrics.REBALANCES.labels("revoked").inc()
        assert self._steps is not None
        await self._steps.drop(partitions)
        if self._publisher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._publisher.drain(), self._settings.kafka_timeout_ms / 1000
                )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._processor.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._processor.assigned(assigned)
