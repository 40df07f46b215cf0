"""Daily caps (ledger.caps), alone and as the planner applies them to a batch."""

from __future__ import annotations

import asyncio
import time

from ledger.caps import DAY_MS, Caps, check
from schemas.commands import CommandType
from storage.memory_event_store import MemoryEventStore
from tests.contract.batches import planned_commands
from tests.integration.helpers import command

NOON_MS = 20_000 * DAY_MS + DAY_MS // 2
TODAY = NOON_MS // DAY_MS


class TestCheck:
    def test_spends_and_captures_count_against_the_spend_cap(self) -> None:
        """Up to the cap is accepted and counted; past it is refused and not counted."""
        caps = Caps(100, None, TODAY, spent=60)
        refused, after = check(CommandType.SPEND, 40, caps, NOON_MS, "GOLD")
        assert refused is None and after.spent == 100
        refused, same = check(CommandType.CAPTURE, 1, after, NOON_MS, "GOLD")
        assert refused is not None and refused.code == "daily_limit_exceeded"
        assert same == after and "100 used today" in refused.message

    def test_transfers_count_against_their_own_cap(self) -> None:
        """A transfer is counted against the transfer cap only; a spend cap does not limit it."""
        caps = Caps(0, 10, TODAY)
        refused, after = check(CommandType.TRANSFER, 10, caps, NOON_MS, "GOLD")
        assert refused is None and (after.spent, after.sent) == (0, 10)
        refused, _ = check(CommandType.TRANSFER, 1, after, NOON_MS, "GOLD")
        assert refused is not None and "give by transfer" in refused.message

    def test_a_new_day_starts_from_nothing(self) -> None:
        """What was used yesterday does not count today."""
        caps = Caps(10, 10, TODAY - 1, spent=10, sent=10)
        refused, after = check(CommandType.SPEND, 10, caps, NOON_MS, "GOLD")
        assert refused is None and (after.day, after.spent, after.sent) == (TODAY, 10, 0)

    def test_credits_and_holds_are_not_capped(self) -> None:
        """Only spends, captures and transfers are capped (a hold counts when captured)."""
        caps = Caps(0, 0, TODAY)
        for kind in (CommandType.TOP_UP, CommandType.BONUS, CommandType.HOLD):
            assert check(kind, 5, caps, NOON_MS, "GOLD") == (None, caps)


class TestPlanned:
    def test_a_batch_counts_its_own_spends(self) -> None:
        """Of three spends in one batch under a cap of 50 with 20 used, the one that would
        pass it is refused and the next one that fits is accepted."""
        store = MemoryEventStore(("GOLD",))
        store.limits[("kid", "GOLD")] = (50, None)

        async def go() -> list[str]:
            epoch = (await store.claim_partition("t", 0, "unit")).epoch
            position, plan = await planned_commands(store, "t", 0, epoch, 0,
                                                    [command("top_up", "kid", 500)])  # fmt: skip
            await store.commit_batch(position, plan)
            spends = [command("spend", "kid", n) for n in (20, 25, 10, 5)]
            caps = await store.load_caps([("kid", "GOLD")], _today())
            assert caps[("kid", "GOLD")].spent == 0
            position, plan = await planned_commands(store, "t", 0, epoch, 1, spends,
                                                    caps=caps)  # fmt: skip
            return [r.error_code or r.status for r in plan.processed_rows]

        assert asyncio.run(go()) == ["accepted", "accepted", "daily_limit_exceeded", "accepted"]


def _today() -> int:
    return int(time.time() * 1000) // DAY_MS
