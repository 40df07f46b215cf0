"""Alerts killed at each crash point: the processor exits (as kill -9 would) before a batch
raising alerts commits, after it commits and before anything of it is published, or after
its messages are published and before the outbox's watermark is stored; a fresh processor
takes over. Each alert must reach the alerts topic exactly when its transaction committed,
at least once, every copy with the same id."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from foundation.settings import Settings
from processor.crash_points import POINTS
from tests.faults.crashes import crashed_then_resumed
from tests.integration.helpers import command, fetch, read_topic
from tests.integration.processes import run_wallet
from tests.integration.test_transfers import apart

pytestmark = pytest.mark.slow


class TestKilledAtEachPoint:
    @pytest.mark.parametrize("point", POINTS)
    async def test_each_alert_is_published_with_its_id(self, stack: Settings, point: str) -> None:
        """Top-ups taking each player past a line, with the processor dying at the point on
        the first batch holding one: every crossing's alert is on the topic (a copy or two,
        one id), none for the top-ups that crossed nothing."""
        users = apart(stack, stack.partitions)
        added = run_wallet(stack, "monitors", "add", "rich", "--kind", "balance_above",
                           "--asset", "GOLD", "--threshold", "100")  # fmt: skip
        assert added.returncode == 0, added.stderr
        top_ups = [command("top_up", u, 60, key=f"{u}-{i}") for i in range(3) for u in users]
        await crashed_then_resumed(stack, f"{point}:top_up", top_ups,
                                   env={"WALLET_MONITORS_RELOAD_MS": "100"})  # fmt: skip
        raised = await fetch(stack, "SELECT user_id, alerts FROM processed_commands"
                             " WHERE alerts IS NOT NULL")  # fmt: skip
        assert sorted(r["user_id"] for r in raised) == sorted(users)  # the second top-up's
        published = await _alerts(stack, len(users))
        ids = Counter(a["alert_id"] for a in published)
        assert sorted(a["user_id"] for a in {a["alert_id"]: a for a in published}.values()) == (
            sorted(users)
        )
        assert all(n <= 2 for n in ids.values()), ids


async def _alerts(settings: Settings, users: int) -> list[dict[str, Any]]:
    """The alerts topic from its start, read until it holds `users` distinct alerts (or 2
    copies of each: the most one crash can make)."""
    for expected in range(users, 2 * users + 1):
        found = [orjson.loads(v) for v in await read_topic(settings, settings.alerts_topic,
                                                           expected)]  # fmt: skip
        if len({a["alert_id"] for a in found}) >= users:
            return found
    return found
