"""The expiry sweep: `expire` commands for wallets nobody touches.

Why a command and not a write of its own: a lot whose expiry has come is booked out by the
first transaction of its account decided after that time, so a wallet in use needs nothing
more. A wallet left alone would keep showing expired currency. The sweep finds such wallets
(through the `lots_due` index) and publishes an `expire` command for each to the commands
topic, keyed by user as any command: it then goes through the partition's single writer in
log order, is recorded, idempotent, replied to and replayed like every other command, and
never races the writer. Its idempotency key names the soonest lot due, so a wallet swept
twice before the first command is processed gets the second answered as a duplicate.

Each process sweeps the partitions it owns, at most SWEEP_WALLETS_MAX wallets a round. A
failure of the database or the broker is logged and the next round tries again
(processor.sweeps): a late sweep delays only the booking, never lets expired currency be spent
(the writer checks expiry on every command).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import structlog

from foundation import metrics
from foundation.settings import Settings
from ledger.lots import epoch_ms
from processor.sweeps import Sweep
from schemas.commands import SWEEP_KEY_PREFIX, CommandType, new_command

log = structlog.get_logger("wallet.expiry")
SWEEP_WALLETS_MAX = 1_000


class ExpirySweep(Sweep):
    @staticmethod
    def interval_s(settings: Settings) -> float:
        return settings.expiry_sweep_interval_ms / 1000

    async def round(self, partitions: list[int]) -> int:
        """Publish an `expire` for each owned wallet holding a lot past its expiry; return
        how many were published."""
        due = await self._store.due_wallets(partitions, SWEEP_WALLETS_MAX)
        if not due:
            return 0
        batches = self.batches()
        now = datetime.now(UTC)
        for user_id, asset, due_at in due:
            command = new_command(
                type=CommandType.EXPIRE, user_id=user_id, asset=asset, amount=None,
                idempotency_key=f"{SWEEP_KEY_PREFIX}{asset}:{epoch_ms(due_at)}",
                command_id=uuid.uuid4(), sent_at=now, reply_to=self._settings.replies_topic,
            )  # fmt: skip
            await batches.add(self._settings.commands_topic, user_id.encode(), command.encode())
        await asyncio.gather(*await batches.send())
        metrics.EXPIRY_SWEEP_COMMANDS.inc(len(due))
        log.info("expiry sweep published", wallets=len(due))
        return len(due)
