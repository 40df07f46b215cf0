"""The transfer sweep: a transfer's next step sent again when it never arrived.

A transfer's steps travel through the outbox and the commands topic (ledger.transfers). The
outbox publishes each at least once, so a step is lost only with the broker's log itself: a
broker that lost its log (see README, "When the broker's log is lost") may have taken a
published `transfer_in` or `transfer_refund` with it before any processor read it, and the
transfer would then stay in flight for good, its amount in `transfers`. Each process looks,
for the partitions it owns, for debits no credit or refusal followed and refusals no refund
followed within WALLET_TRANSFER_RESEND_MS, and publishes their next step again: the same
bytes the outbox sent (ledger.plan.outbox_row_of), so a step that was only late is a
duplicate (its key is the transfer's), and answers nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog
from aiokafka import AIOKafkaProducer

from foundation import metrics
from foundation.settings import Settings
from ledger.plan import outbox_row_of
from messaging.kafka import RecordBatches
from processor import sweeps
from storage.event_store import EventStore

log = structlog.get_logger("wallet.transfers")
RESEND_STEPS_MAX = 1_000  # a round's, at most


class TransferSweep:
    def __init__(
        self,
        store: EventStore,
        producer: AIOKafkaProducer,
        settings: Settings,
        owned: Callable[[], Iterable[int]],
    ) -> None:
        self._store = store
        self._producer = producer
        self._topic = settings.commands_topic
        self._owned = owned  # the partitions this process owns now
        self._after_ms = settings.transfer_resend_ms
        self._timeout_s = settings.kafka_timeout_ms / 1000
        self._partition_counts: dict[str, int] = {}

    async def run(self) -> None:
        # Every half of the wait: a lost step goes out again between one and one and a half
        # waits after its record.
        await sweeps.every(self._after_ms / 2000, self._timeout_s, self.sweep, "transfers")

    async def sweep(self) -> int:
        """Publish again the next step of each owned transfer stuck past the wait; return
        how many were published."""
        partitions = sorted(self._owned())
        if not partitions:
            return 0
        stuck = await self._store.stuck_transfers(self._topic, partitions, self._after_ms,
                                                  RESEND_STEPS_MAX)  # fmt: skip
        if not stuck:
            return 0
        batches = RecordBatches(self._producer, self._partition_counts)
        for row in stuck:
            step = outbox_row_of(row)
            assert step.reply_topic == self._topic and step.reply_value is not None, step
            await batches.add(self._topic, step.reply_key, step.reply_value)
        await asyncio.gather(*await batches.send())
        metrics.TRANSFER_STEPS_RESENT.inc(len(stuck))
        log.warning("transfer steps sent again", steps=len(stuck))
        return len(stuck)
