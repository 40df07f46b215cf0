"""The command client: batched publishing reaches the processor in order, per user."""

from __future__ import annotations

import asyncio

from foundation.settings import Settings
from tests.integration.helpers import balance, client_for, command, running_processor


class TestPublishMany:
    async def test_every_command_gets_its_reply_in_order_per_user(self, stack: Settings) -> None:
        """Commands sent as record batches are each answered once, and each user's commands
        are decided in the order they were given (running balances climb by one)."""
        users = [f"batched-{n}" for n in range(7)]
        commands = [
            command("top_up", users[i % 7], 1, reply_to=stack.replies_topic) for i in range(140)
        ]
        records = [(c.user_id.encode(), c.encode(), str(c.command_id)) for c in commands]
        async with running_processor(stack), client_for(stack) as client:
            futures = await client.publish_many(records)
            await client.flush()
            replies = await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert [r["command_id"] for r in replies] == [str(c.command_id) for c in commands]
        for user in users:
            mine = [r["balance"] for r in replies if r["user_id"] == user]
            assert mine == list(range(1, 21))
            assert await balance(stack, user) == 20
