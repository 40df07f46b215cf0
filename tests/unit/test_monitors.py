"""Monitors evaluated by the writer: the crossings that raise an alert, the windows spending
is counted in, and the alerts a batch's records keep and its outbox publishes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from ledger.monitors import Monitor, Window, alert_id, check, watch
from schemas.alerts import Alert, MonitorKind
from schemas.commands import Part
from storage.event_store import OutboxMessage
from storage.memory_event_store import MemoryEventStore
from tests.contract.batches import planned_commands
from tests.integration.helpers import command
from wallet.cli import MONITOR_KINDS

TOPIC = "unit.commands"
HOUR_MS = 3_600_000
RICH = Monitor("rich", "balance_above", "GOLD", 1000, None)
POOR = Monitor("poor", "balance_below", "GOLD", 10, None)
SPENDER = Monitor("spender", "spend_over_window", "GOLD", 100, 3600)


def hits(monitors: tuple[Monitor, ...], moved: tuple[str, int, int, int], now_ms: int = 0,
         spent: dict[int, Window] | None = None) -> list[str]:  # fmt: skip
    watched = watch(monitors, {("ann", "GOLD"): spent or {}})
    return [h.monitor_id for h in check(watched, ("ann", "GOLD"), moved, now_ms)]


class TestCrossings:
    def test_a_balance_rising_to_the_threshold_raises_one(self) -> None:
        """balance_above fires when a transaction takes the balance from below the threshold
        to it or past it, and not while it stays past it."""
        assert hits((RICH,), ("top_up", 500, 600, 1100)) == ["rich"]
        assert hits((RICH,), ("top_up", 400, 600, 1000)) == ["rich"]
        assert hits((RICH,), ("top_up", 100, 1100, 1200)) == []
        assert hits((RICH,), ("spend", 100, 1100, 1000)) == []

    def test_a_balance_falling_below_the_threshold_raises_one(self) -> None:
        """balance_below fires when the balance goes from the threshold or above to below."""
        assert hits((POOR,), ("spend", 5, 12, 7)) == ["poor"]
        assert hits((POOR,), ("spend", 2, 10, 8)) == ["poor"]
        assert hits((POOR,), ("spend", 1, 8, 7)) == []
        assert hits((POOR,), ("top_up", 1, 9, 10)) == []

    def test_spending_past_the_value_in_a_window_raises_one(self) -> None:
        """spend_over_window fires when the window's spending goes past the value: counting
        what was spent before in the same window, and nothing from an earlier window."""
        earlier = {3600: Window(0, 90)}
        assert hits((SPENDER,), ("spend", 20, 500, 480), 10, earlier) == ["spender"]
        assert hits((SPENDER,), ("spend", 20, 500, 480), HOUR_MS + 10, earlier) == []
        assert hits((SPENDER,), ("purchase", 11, 500, 489), 10, earlier) == ["spender"]
        assert hits((SPENDER,), ("top_up", 500, 0, 500), 10, earlier) == []
        assert hits((SPENDER,), ("spend", 5, 500, 495), 10, {3600: Window(0, 101)}) == []

    def test_other_assets_are_not_watched(self) -> None:
        """A monitor watches its asset only."""
        watched = watch((RICH,), {})
        assert check(watched, ("ann", "DIAMONDS"), ("top_up", 5000, 0, 5000), 0) == []

    def test_the_command_line_knows_every_kind(self) -> None:
        """`wallet monitors add --kind` offers exactly the kinds the contract has."""
        assert tuple(k.value for k in MonitorKind) == MONITOR_KINDS

    def test_an_alert_has_one_id(self) -> None:
        """The id is derived from the monitor and the transaction: the same on every publish."""
        tx = uuid.uuid4()
        assert alert_id("rich", tx) == alert_id("rich", tx) != alert_id("poor", tx)


class TestBatches:
    def run(self, monitors: tuple[Monitor, ...], *commands: Any) -> list[Any]:
        store = MemoryEventStore(("GOLD", "DIAMONDS"))

        async def go() -> list[Any]:
            epoch = (await store.claim_partition(TOPIC, 0, "unit")).epoch
            keys = [(c.user_id, c.asset) for c in commands]
            spending = await store.load_spending(keys, [3600], int(datetime.now(UTC).timestamp()
                                                                   * 1000))  # fmt: skip
            position, plan = await planned_commands(store, TOPIC, 0, epoch, 0, list(commands),
                                                    watch=watch(monitors, spending))  # fmt: skip
            await store.commit_batch(position, plan)
            rebuilt = await store.unpublished(TOPIC, 0, (0, 0), 1000)
            assert rebuilt == [OutboxMessage.of(r) for r in plan.outbox_rows], "rebuilt alike"
            return rebuilt

        return asyncio.run(go())

    def test_the_record_keeps_its_alerts_and_the_outbox_publishes_them(self) -> None:
        """Each alert a transaction raised is its own outbox message at its offset, a valid
        Alert naming the monitor, the wallet, the value and the transaction."""
        sent = self.run((RICH, SPENDER), command("top_up", "ann", 1500),
                        command("spend", "ann", 60), command("spend", "ann", 60))  # fmt: skip
        alerts = [(m.source_offset, Alert.model_validate_json(m.alert_value))
                  for m in sent if m.alert_value]  # fmt: skip
        assert [(o, a.monitor_id, a.value) for o, a in alerts] == [
            (0, "rich", 1500),
            (2, "spender", 120),
        ]
        _, first = alerts[0]
        assert (first.user_id, first.asset, first.type, first.threshold) == (
            "ann", "GOLD", "top_up", 1000)  # fmt: skip
        assert first.alert_id == alert_id("rich", first.transaction_id)

    def test_a_purchase_part_raises_its_own(self) -> None:
        """A purchase's cost counts as spending, and each part is watched on its asset."""
        sent = self.run((SPENDER,), command("top_up", "ann", 500),
                        command("top_up", "ann", 50, "DIAMONDS"),
                        command("purchase", "ann", None, costs=[Part(asset="GOLD", amount=150),
                                Part(asset="DIAMONDS", amount=5)], sku="sword"))  # fmt: skip
        alerts = [orjson.loads(m.alert_value) for m in sent if m.alert_value]
        assert [(a["monitor_id"], a["type"], a["value"]) for a in alerts] == [
            ("spender", "purchase", 150)
        ]

    def test_no_monitor_no_alert(self) -> None:
        """Without monitors no record keeps alerts and nothing goes to the alerts topic."""
        sent = self.run((), command("top_up", "ann", 5000))
        assert all(m.alert_value is None for m in sent)
