"""Property: any one record, however hostile its JSON, goes through the whole write path (decode,
plan, commit to the real PostgreSQL) without an error, and the partition moves past it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation.settings import Settings
from messaging.kafka import partition_for
from processor.intake import IntakeRules
from processor.worker import AssetCatalog, PartitionWorker, WorkerConfig
from storage.db import create_pool
from storage.event_store import PostgresEventStore

USER = "fuzz-user"
EXAMPLES = 300

_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.integers(min_value=2**63 - 2, max_value=2**70) | st.text(max_size=40)
    | st.sampled_from(["", "\x00", "a\ud800b", "\udfff", "GOLD", "top_up", "💎" * 3])
)  # fmt: skip
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=10,
)  # fmt: skip
_FIELDS = ["command_id", "idempotency_key", "type", "user_id", "asset", "amount",
           "description", "metadata", "reply_to", "sent_at"]  # fmt: skip


def _valid() -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid4()), "idempotency_key": uuid.uuid4().hex, "type": "top_up",
        "user_id": USER, "asset": "GOLD", "amount": 5, "description": "fine",
        "metadata": {"k": "v"}, "reply_to": "wallet.replies", "sent_at": "2026-11-30T10:00:00Z",
    }  # fmt: skip


def _text(size_max: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Mostly printable text in any script (what validation lets through), now and then any
    code point at all (control characters, NUL, lone surrogates)."""
    printable = st.characters(exclude_categories=["Cs", "Cc"])
    return st.text(printable, min_size=min_size, max_size=size_max) | st.text(
        st.characters(), min_size=min_size, max_size=size_max
    )


@st.composite
def _record_values(draw: st.DrawFn) -> bytes:
    """A command with some fields (or the whole) replaced by arbitrary JSON, written in one
    of the ways a producer might: ASCII escapes, raw UTF-8 (surrogates passed through), a
    repeated key, or bytes that are not JSON at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=200))
    doc: Any = _valid()
    # Free text where the contract takes it: the likeliest way to reach the database with
    # something it cannot store.
    doc["description"] = draw(_text(60))
    doc["idempotency_key"] = draw(_text(30, min_size=1))
    metadata_values = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text(40)
    if draw(st.integers(0, 4)) == 0:
        metadata_values = metadata_values | _scalars
    doc["metadata"] = draw(st.dictionaries(_text(8, min_size=1), metadata_values, max_size=4))
    replaced = draw(st.lists(st.sampled_from(_FIELDS), max_size=3, unique=True))
    for name in replaced if draw(st.integers(0, 2)) == 0 else ():
        if draw(st.booleans()):
            doc[name] = draw(_json)
        else:
            del doc[name]
    if draw(st.integers(0, 4)) == 0:
        doc.update(draw(st.dictionaries(st.text(max_size=6), _json, max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        doc = draw(_json)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0 and text.startswith("{") and len(text) > 2:
        text = '{"amount": 1, ' + text[1:]  # a repeated key, when amount is there too
    return text.encode("utf-8", "surrogatepass")


class _Pipeline:
    """One partition's worker and the real store, driven record by record in its own loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.worker: PartitionWorker | None = None
        self.store: PostgresEventStore | None = None

    async def start(self) -> None:
        pool = await create_pool(self.settings)
        self.store = PostgresEventStore(pool, 10.0)
        partition = partition_for(USER, self.settings.partitions)
        rules = IntakeRules(self.settings.partitions, self.settings.command_bytes_max,
                            frozenset({self.settings.commands_topic}))  # fmt: skip
        config = WorkerConfig(owner="property", balance_cache_max=1000, rules=rules)
        tp = TopicPartition(self.settings.commands_topic, partition)
        self.worker = PartitionWorker(tp, self.store, AssetCatalog(self.store), config)
        await self.worker.take_over()

    async def one(self, value: bytes) -> str:
        """Decode, plan and commit one record; return its outcome."""
        worker, store = self.worker, self.store
        assert worker is not None and store is not None
        offset = worker.next_offset
        record = ConsumerRecord(worker.tp.topic, worker.tp.partition, offset,
                                int(time.time() * 1000), 0, USER.encode(), value, None,
                                len(USER), len(value), [])  # fmt: skip
        batch = worker.admit([record], offset + 1)
        assert batch is not None
        known = await store.find_processed(batch.ids)
        loaded = await store.load_accounts(batch.uncached)
        plan = worker.plan(batch, known, loaded, await store.load_assets())
        await store.commit_batch(batch.position, plan)
        worker.committed(batch, plan)
        assert worker.next_offset == offset + 1, "the partition did not move on"
        [outcome] = plan.decided
        for row in plan.outbox_rows:  # what the relay would publish is valid JSON
            for value_bytes in (row.reply_value, row.event_value, row.dlq_value):
                if value_bytes is not None:
                    orjson.loads(value_bytes)
        return outcome.outcome


def _run_property(settings_: Settings) -> dict[str, int]:
    pipeline = _Pipeline(settings_)
    pipeline.loop.run_until_complete(pipeline.start())
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(_record_values())
    def every_record_moves_the_partition_on(value: bytes) -> None:
        outcome = pipeline.loop.run_until_complete(pipeline.one(value))
        seen[outcome] = seen.get(outcome, 0) + 1

    try:
        every_record_moves_the_partition_on()
    finally:
        pipeline.loop.close()
    return seen


class TestAnyRecord:
    async def test_decoded_planned_and_committed_without_error(self, stack: Settings) -> None:
        """300 generated records (arbitrary JSON in any field, huge integers, NUL, lone
        surrogates, repeated keys, non-JSON bytes): each commits, and the partition's offset
        moves one past it; both accepted commands and dead letters occur."""
        seen = await asyncio.to_thread(_run_property, stack)
        assert sum(seen.values()) >= EXAMPLES
        assert seen.get("dead_lettered", 0) > 0 and seen.get("accepted", 0) > 0, seen
