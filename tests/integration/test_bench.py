"""`wallet bench` against a real processor: every command replied, and the latency split at
the moment each command's batch was planned."""

from __future__ import annotations

from foundation.settings import Settings
from tests.integration.helpers import running_processor
from wallet.bench import run_bench


class TestRunBench:
    async def test_every_reply_is_counted_and_latency_is_split(self, stack: Settings) -> None:
        """All commands come back with an outcome; the two parts of the latency are each
        within the whole (they share one machine's clock)."""
        async with running_processor(stack):
            result = await run_bench(stack, 200, 20, rate_per_s=400, ceiling=False)
        assert sum(result.outcomes.values()) == 200 and result.commands_per_s > 0
        assert result.ceiling_commands_per_s is None
        assert 0 <= result.to_planned_p50_ms <= result.latency_p99_ms
        assert 0 <= result.planned_to_reply_p50_ms <= result.latency_p99_ms
        assert 1 <= result.batch_mean <= result.batch_max

    async def test_transfers_cross_partitions_and_all_complete(self, stack: Settings) -> None:
        """With transfers, every gift goes between two partitions and completes; the clock
        leaves the opening top-ups out."""
        async with running_processor(stack):
            result = await run_bench(stack, 100, 8, rate_per_s=200, transfers=True)
        assert result.kind == "transfers" and result.outcomes == {"completed": 100}
        assert result.ceiling_commands_per_s is None  # no ceiling for a saga
        assert result.lines()[1].endswith("transfers/s (all replies received)")
