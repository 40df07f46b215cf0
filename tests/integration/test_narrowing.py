"""A record the ledger keeps refusing is narrowed down and set aside; a database failure that is
nobody's record is retried without skipping anything (processor.narrowing on the real broker)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from foundation.settings import Settings
from tests.integration.helpers import (
    client_for,
    command,
    fetch,
    read_topic,
    refuse_commands,
    running_processor,
    send_all,
)


class TestRecordTheLedgerRefuses:
    async def test_set_aside_and_the_partition_moves_on(
        self, stack: Settings, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Fifty commands in one go, one of which the ledger refuses: that one is answered
        invalid_command and dead-lettered as unprocessable, the other 49 are accepted, a
        later command on the same partition is answered within seconds, and no log line
        quotes the command (the database's error message here does)."""
        await refuse_commands(stack, "23514")  # check_violation
        commands = [
            command("top_up", "alice", 1 + i, key=f"poison-{i}" if i == 20 else None,
                    description="words-no-log-may-hold" if i == 20 else None)
            for i in range(50)
        ]  # fmt: skip
        async with running_processor(stack), client_for(stack) as client:
            replies = await send_all(client, commands, timeout_s=60)
            started_s = time.monotonic()
            later = await client.request(command("top_up", "alice", 1000))
            later_s = time.monotonic() - started_s
        poisoned = replies.pop(20)
        assert poisoned["status"] == "rejected"
        assert poisoned["error"]["code"] == "invalid_command"
        assert "refused" in poisoned["error"]["message"]
        assert "CheckViolationError" in poisoned["error"]["message"]
        assert [r["status"] for r in replies] == ["accepted"] * 49
        assert later.status == "accepted" and later_s < 5
        assert later.balance == sum(1 + i for i in range(50) if i != 20) + 1000
        letters = [orjson.loads(v) for v in await read_topic(stack, stack.dlq_topic, 1)]
        assert [(d["code"], d["source_offset"]) for d in letters] == [("unprocessable", 20)]
        state = await fetch(stack, "SELECT sum(failures_in_a_row) AS n FROM partition_state")
        assert state[0]["n"] == 0  # the commits since cleared what the failures recorded
        logged = capsys.readouterr()
        assert "batch failed" in logged.out + logged.err
        assert "words-no-log-may-hold" not in logged.out + logged.err

    async def test_a_lone_record_with_nothing_after_it_is_set_aside(self, stack: Settings) -> None:
        """On an idle partition (no later record to compare with) the refused record is still
        answered, invalid_command, within seconds."""
        await refuse_commands(stack, "23514")
        async with running_processor(stack), client_for(stack) as client:
            started_s = time.monotonic()
            reply = await client.request(command("top_up", "idle", 3, key="poison-1"))
            took_s = time.monotonic() - started_s
        assert reply.error is not None and reply.error.code == "invalid_command"
        assert took_s < 5, took_s

    async def test_a_refusal_of_every_record_sets_none_aside(self, stack: Settings) -> None:
        """When the database refuses every command alike (a check violation on each), the
        control (an ordinary command, written and rolled back) fails too: nothing is set
        aside, the partition waits, visibly, and once the cause is gone every command is
        accepted in order."""
        await refuse_commands(stack, "23514", "%")
        commands = [command("top_up", "bob", 1, key=f"poison-{i}") for i in range(8)]
        async with running_processor(stack), client_for(stack) as client:
            futures = [await client.publish(c) for c in commands]
            await client.flush()
            done, _ = await asyncio.wait(futures, timeout=6)
            state = await fetch(
                stack, "SELECT failures_in_a_row, last_error FROM partition_state"
                " WHERE failures_in_a_row > 0"
            )  # fmt: skip
            await refuse_commands(stack, None)
            replies = await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert not done
        assert [(r["status"], r["balance"]) for r in replies] == [
            ("accepted", i + 1) for i in range(8)
        ]
        assert len(state) == 1 and "and on an ordinary command too" in state[0]["last_error"]
        assert await read_topic(stack, stack.dlq_topic, 1) == []


class TestDatabaseFailure:
    async def test_retried_without_skipping_and_shown_while_it_lasts(self, stack: Settings) -> None:
        """A failure of the database's own kind (disk_full) on one command is retried, never
        set aside: the command waits, the partition shows its failures in partition_state,
        and once the database accepts it again the command is accepted in order."""
        await refuse_commands(stack, "53100")  # disk_full
        first = command("top_up", "carol", 5, key="poison-1")
        second = command("top_up", "carol", 7)
        async with running_processor(stack), client_for(stack) as client:
            futures = [await client.publish(c) for c in (first, second)]
            await client.flush()
            done, _ = await asyncio.wait(futures, timeout=8)
            state = await fetch(
                stack, "SELECT failures_in_a_row, last_error, failing_since FROM partition_state"
                " WHERE failures_in_a_row > 0"
            )  # fmt: skip
            await refuse_commands(stack, None)
            replies = await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert not done  # nothing skipped past the failing command
        assert len(state) == 1 and state[0]["failures_in_a_row"] >= 2
        assert "DiskFullError (SQLSTATE 53100)" in state[0]["last_error"]
        assert [(r["status"], r["balance"]) for r in replies] == [("accepted", 5), ("accepted", 12)]
        assert await read_topic(stack, stack.dlq_topic, 1) == []
