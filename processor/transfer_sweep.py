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

import structlog

from foundation import metrics
from foundation.settings import Settings
from ledger.plan import outbox_row_of
from processor.sweeps import Sweep

log = structlog.get_logger("wallet.transfers")
RESEND_STEPS_MAX = 1_000  # a round's, at most


class TransferSweep(Sweep):
    @staticmethod
    def interval_s(settings: Settings) -> float:
        # Every half of the wait: a lost step goes out again between one and one and a half
        # waits after its record.
        return settings.transfer_resend_ms / 2000

    async def round(self, partitions: list[int]) -> int:
        """Publish again the next step of each owned transfer stuck past the wait; return
        how many were published."""
        topic = self._settings.commands_topic
        stuck = await self._store.stuck_transfers(topic, partitions,
                                                  self._settings.transfer_resend_ms,
                                                  RESEND_STEPS_MAX)  # fmt: skip
        if not stuck:
            return 0
        batches = self.batches()
        for row in stuck:
            step = outbox_row_of(row)
            assert step.reply_topic == topic and step.reply_value is not None, step
            await batches.add(topic, step.reply_key, step.reply_value)
        await asyncio.gather(*await batches.send())
        metrics.TRANSFER_STEPS_RESENT.inc(len(stuck))
        log.warning("transfer steps sent again", steps=len(stuck))
        return len(stuck)
