"""Each owned partition's health: its failures in a row, the last one's kind, and whether (and
when) it must be resynced from storage before its fetched records are used again. Pure: the
clock is injected, so the backoff is tested as data.

Why a resync after every failure: a failed transaction may still have committed (its answer
lost), so the stored position is the only truth; and records fetched before the failure may
belong to the range that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aiokafka import TopicPartition

from storage.db import Failure

RESYNC_BACKOFF_START_S = 0.1


@dataclass(slots=True)
class PartitionHealth:
    failures: int = 0  # batches failed in a row (reset by a commit)
    error: str | None = None  # the last failure's kind
    resync_at_s: float | None = None  # stale until resynced, not before this time; None: fresh


class Health:
    """The health of every partition this process owns, keyed by partition."""

    def __init__(self, backoff_max_s: float, clock: Callable[[], float]) -> None:
        assert backoff_max_s > 0
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._partitions: dict[TopicPartition, PartitionHealth] = {}

    def _of(self, tp: TopicPartition) -> PartitionHealth:
        return self._partitions.setdefault(tp, PartitionHealth())

    def failed(self, tp: TopicPartition, kind: str, quick: bool = False) -> int:
        """A batch of `tp` failed: stale until resynced, after a wait that doubles with each
        failure in a row up to the maximum (the shortest one when `quick`: narrowing a
        record's failure down). Returns the failures in a row."""
        health = self._of(tp)
        health.failures += 1
        health.error = kind
        wait_s = RESYNC_BACKOFF_START_S if quick else self._backoff_s(health.failures)
        health.resync_at_s = self._clock() + wait_s
        return health.failures

    def refetch(self, tp: TopicPartition) -> None:
        """Stale without a failure of its own (rolled back with another partition's batch, or
        its stored offset moved): resync at once, or after the backoff it already has."""
        health = self._of(tp)
        health.resync_at_s = self._clock() + self._backoff_s(health.failures)

    def _backoff_s(self, failures: int) -> float:
        """0 without failures; then 0.1 s doubling with each failure in a row, up to the max."""
        if not failures:
            return 0.0
        return min(RESYNC_BACKOFF_START_S * 2.0 ** (failures - 1), self._backoff_max_s)

    def committed(self, tp: TopicPartition) -> None:
        self._partitions.pop(tp, None)

    def resynced(self, tp: TopicPartition) -> None:
        health = self._partitions.get(tp)
        if health is not None:
            health.resync_at_s = None

    def forget(self, tp: TopicPartition) -> None:
        self._partitions.pop(tp, None)

    def stale(self, tp: TopicPartition) -> bool:
        health = self._partitions.get(tp)
        return health is not None and health.resync_at_s is not None

    def failing(self, tp: TopicPartition) -> bool:
        health = self._partitions.get(tp)
        return health is not None and health.failures > 0

    def due(self) -> Iterator[TopicPartition]:
        """The stale partitions whose resync time has come."""
        now_s = self._clock()
        for tp, health in list(self._partitions.items()):
            if health.resync_at_s is not None and health.resync_at_s <= now_s:
                yield tp

    def failure(self, tp: TopicPartition) -> Failure | None:
        """What a claim retrying `tp` records for /ready and `wallet status`."""
        health = self._partitions.get(tp)
        if health is None or not health.failures:
            return None
        return Failure(health.failures, health.error or "unknown")

    def failures_by_partition(self, owned: Iterable[TopicPartition]) -> dict[int, int]:
        return {tp.partition: self.failures_of(tp) for tp in owned}

    def failures_of(self, tp: TopicPartition) -> int:
        health = self._partitions.get(tp)
        return health.failures if health is not None else 0
