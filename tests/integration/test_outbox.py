"""The outbox relay's handling of reply_to, on the real broker: replies to topics that do not
exist are dead-lettered one by one, nothing waits on them, and no topic is ever created."""

from __future__ import annotations

import time

import orjson

from foundation.settings import Settings
from messaging.kafka import make_consumer
from tests.integration.helpers import (
    client_for,
    command,
    read_topic,
    running_processor,
    send_all,
)


async def _topics(settings: Settings) -> set[str]:
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


class TestUnknownReplyTopics:
    async def test_dead_lettered_per_message_and_never_created(self, stack: Settings) -> None:
        """Forty commands each naming its own made-up reply topic, sent with forty ordinary
        ones: the ordinary replies come at once, each made-up one becomes a
        reply_undeliverable dead letter holding the reply, and the broker has no new topic."""
        before = await _topics(stack)
        lost = [command("top_up", f"lost-{i}", 1, reply_to=f"nowhere-{i}") for i in range(40)]
        found = [command("top_up", f"found-{i}", 1) for i in range(40)]
        async with running_processor(stack), client_for(stack) as client:
            for c in lost:  # raw: the client would address the reply to its own topic
                await client.publish_raw(c.user_id.encode(), c.encode())
            started_s = time.monotonic()
            replies = await send_all(client, found, timeout_s=30)
            elapsed_s = time.monotonic() - started_s
            letters = [orjson.loads(v) for v in await read_topic(stack, stack.dlq_topic, 40)]
        assert [r["status"] for r in replies] == ["accepted"] * 40
        assert elapsed_s < 5, elapsed_s  # was about 10 s per unknown topic, one after another
        assert {d["code"] for d in letters} == {"reply_undeliverable"} and len(letters) == 40
        answered = {orjson.loads(d["value"])["command_id"] for d in letters}
        assert answered == {str(c.command_id) for c in lost}
        assert "does not exist" in letters[0]["reason"]
        assert not {t for t in await _topics(stack) - before if t.startswith("nowhere-")}


class TestAllowedReplyTopics:
    async def test_reply_to_outside_the_list_is_refused(self, stack: Settings) -> None:
        """With WALLET_REPLY_TOPICS set, a reply_to matching no pattern is dead-lettered as
        forbidden_reply_topic; the replies topic itself stays allowed."""
        settings = stack.model_copy(update={"reply_topics": "game-*.replies, other-??"})
        outside = command("top_up", "zed", 1, reply_to="elsewhere.replies")
        async with running_processor(settings), client_for(settings) as client:
            await client.publish_raw(b"zed", outside.encode())
            [reply] = await send_all(client, [command("top_up", "zed", 2)], timeout_s=30)
            letters = [orjson.loads(v) for v in await read_topic(stack, stack.dlq_topic, 1)]
        assert reply["status"] == "accepted" and reply["balance"] == 2
        assert [d["code"] for d in letters] == ["forbidden_reply_topic"]
        assert "WALLET_REPLY_TOPICS" in letters[0]["reason"]
