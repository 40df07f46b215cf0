"""The bench's ceiling: a raw COPY of the planned rows into scratch tables, cleaned up after."""

from __future__ import annotations

from foundation.settings import Settings
from tests.integration.helpers import command, fetch
from wallet.ceiling import copy_ceiling, plan_rows


class TestPlanRows:
    def test_rows_are_the_processors_own(self) -> None:
        """Each accepted top-up plans one idempotency record, two entries and one message for
        the relay (rebuilt from the record, so not stored), in batches no larger than the
        service's."""
        commands = [command("top_up", f"u{n % 5}", 3) for n in range(25)]
        plans = plan_rows(commands, partitions=3, batch_size=4)
        assert sum(len(p.processed_rows) for p in plans) == 25
        assert sum(len(p.entry_rows) for p in plans) == 50
        assert sum(len(p.outbox_rows) for p in plans) == 25
        assert sum(len(p.stored_outbox_rows()) for p in plans) == 0
        assert all(len(p.processed_rows) <= 4 for p in plans)


class TestCopyCeiling:
    async def test_copies_every_row_and_leaves_nothing_behind(self, stack: Settings) -> None:
        """The timed copy stores all rows (per top-up its record, two entries and the lot it
        opened), and neither scratch tables nor ledger rows remain."""
        commands = [command("top_up", f"u{n % 5}", 3) for n in range(25)]
        result = await copy_ceiling(stack, commands)
        assert (result.commands, result.rows) == (25, 100)
        assert result.commands_per_s > 0
        schemas = await fetch(
            stack, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'wallet_ceiling_%'"
        )
        assert schemas == []
        ledger = await fetch(stack, "SELECT count(*) AS n FROM processed_commands")
        assert ledger[0]["n"] == 0
