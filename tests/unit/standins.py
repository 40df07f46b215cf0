"""Stand-ins for the Kafka edge of the processor's unit tests: a consumer that records the
seeks, pauses and resumes made on it, an outbox that records what it is handed, and records
of commands as a fetch returns them. Storage is the real in-memory event store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition

from foundation.errors import StorageUnavailableError
from messaging.kafka import partition_for
from processor.intake import IntakeRules
from processor.outbox import PublishJob
from processor.worker import WorkerConfig
from storage.db import Failure
from storage.event_store import PartitionClaim
from storage.memory_event_store import MemoryEventStore
from tests.integration.helpers import command

TOPIC = "unit.commands"
PARTITIONS = 4
CONFIG = WorkerConfig(
    owner="unit",
    balance_cache_max=100,
    rules=IntakeRules(PARTITIONS, 64_000, frozenset({TOPIC})),
)


@dataclass
class ConsumerStandIn:
    """Records what the processor asks of its consumer; `ends` are the high watermarks."""

    assigned: set[TopicPartition] = field(default_factory=set)
    seeks: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)
    paused: set[TopicPartition] = field(default_factory=set)
    ends: dict[TopicPartition, int] = field(default_factory=dict)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition.partition, offset))

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.seeks += [(tp.partition, 0) for tp in partitions]

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.ends.get(partition)

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        return self.ends.get(partition)

    async def position(self, partition: TopicPartition) -> int:
        return self.ends.get(partition, 0)

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


@dataclass
class OutboxStandIn:
    """Records the jobs and backlog requests the processor hands the relay."""

    jobs: list[PublishJob] = field(default_factory=list)
    backlogs: list[tuple[int, int]] = field(default_factory=list)  # (partition, epoch)

    async def submit(self, job: PublishJob) -> None:
        self.jobs.append(job)

    async def submit_backlog(
        self, topic: str, partition: int, epoch: int, after: tuple[int, int]
    ) -> None:
        self.backlogs.append((partition, epoch))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class FlakyStore(MemoryEventStore):
    """The memory store, made unavailable on demand (a PostgreSQL outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.claims = 0

    def _check_up(self) -> None:
        if self.down:
            raise StorageUnavailableError("ConnectionRefusedError", sqlstate=None)

    async def claim_partition(
        self, topic: str, partition: int, owner: str, failure: Failure | None = None
    ) -> PartitionClaim:
        self._check_up()
        self.claims += 1
        return await super().claim_partition(topic, partition, owner, failure)

    async def commit_batches(self, batches):  # type: ignore[no-untyped-def]
        self._check_up()
        await super().commit_batches(batches)

    async def mark_published(self, marks):  # type: ignore[no-untyped-def]
        self._check_up()
        await super().mark_published(marks)


def user_on(partition: int) -> str:
    """A user id the producers' partitioner sends to `partition`."""
    return next(
        u for u in (f"user-{i}" for i in range(1000)) if partition_for(u, PARTITIONS) == partition
    )


def records(tp: TopicPartition, first: int, amounts: list[int]) -> list[ConsumerRecord]:
    """Top-ups of `amounts` for the partition's user at offsets first.., as a fetch returns
    them."""
    user = user_on(tp.partition)
    found = []
    now_ms = int(time.time() * 1000)
    for offset, amount in enumerate(amounts, first):
        value = command("top_up", user, amount, key=f"k-{offset}").model_dump_json().encode()
        key = user.encode()
        found.append(ConsumerRecord(tp.topic, tp.partition, offset, now_ms, 0, key, value,
                                    None, len(key), len(value), []))  # fmt: skip
    return found
