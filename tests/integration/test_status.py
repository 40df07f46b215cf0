"""`wallet status` against a running processor and projector: the operator's screen."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from foundation.settings import Settings
from tests.integration.helpers import (
    client_for,
    command,
    running_processor,
    running_projector,
    wait_projected,
)
from tests.integration.processes import run_wallet


async def _status_once_published(settings: Settings) -> dict[str, Any]:
    """`wallet status --json`, again until the dead letter is out (it is published after its
    batch commits, a moment after the commands' replies)."""
    for _ in range(60):
        result = await asyncio.to_thread(run_wallet, settings, "status", "--json")
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        if report["dead_letters"] == 1:
            return report
        await asyncio.sleep(0.5)
    raise AssertionError(f"the dead letter never showed: {report}")


class TestStatus:
    async def test_report_after_traffic(self, stack: Settings) -> None:
        """Every partition shows its owner and a lag of 0 once processed, nothing unpublished,
        the projector's position, and the one dead letter with its reason code."""
        async with running_processor(stack) as processor, running_projector(stack):
            async with client_for(stack) as client:
                # In record batches of several records: the broker's ListOffsets is then short
                # of the log's end (a Tansu fact), which the report must not show as the end.
                commands = [command("top_up", f"s{i}", 10, reply_to=stack.replies_topic)
                            for i in range(8)]  # fmt: skip
                records = [(c.user_id.encode(), c.encode(), str(c.command_id)) for c in commands]
                futures = await client.publish_many(records)
                await client.flush()
                await asyncio.wait_for(asyncio.gather(*futures), 60)
                await client.publish_raw(b"s1", b"\xff not utf-8")
                await client.flush()
            await wait_projected(stack)
            report = await _status_once_published(stack)
            screen = await asyncio.to_thread(run_wallet, stack, "status")
        partitions = report["partitions"]
        assert [p["partition"] for p in partitions] == list(range(stack.partitions))
        assert {p["owner"] for p in partitions} == {processor.owner}
        assert [p["lag"] for p in partitions] == [0] * stack.partitions
        assert [p["log_end"] for p in partitions] == [p["next_offset"] for p in partitions]
        assert [p["log_start"] for p in partitions] == [0] * stack.partitions
        assert sum(p["next_offset"] for p in partitions) == 9
        assert sum(p["unpublished"] for p in partitions) == 0
        assert any(p["projected_entry"] for p in partitions)
        assert report["dead_letters"] == 1 and report["broker_error"] is None
        assert [d["code"] for d in report["recent_dead_letters"]] == ["not_utf8"]
        assert screen.returncode == 0, screen.stderr
        assert report["transfers_in_flight"] == 0
        for heading in ("Partitions of", "outbox backlog", "dead letters", "Recent dead letters",
                        "transfers in flight"):  # fmt: skip
            assert heading in screen.stdout
