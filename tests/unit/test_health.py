"""Partition health as data: failures in a row, the backoff before a resync, and what a claim
records, with a clock the test moves."""

from __future__ import annotations

from aiokafka import TopicPartition

from processor.health import RESYNC_BACKOFF_START_S, Health
from storage.db import Failure

TP = TopicPartition("wallet.commands", 3)


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _health(backoff_max_s: float = 5.0) -> tuple[Health, _Clock]:
    clock = _Clock()
    return Health(backoff_max_s, clock), clock


class TestFailed:
    def test_backoff_doubles_up_to_the_maximum(self) -> None:
        """Each failure in a row doubles the wait before the resync, up to the maximum."""
        health, clock = _health(backoff_max_s=1.0)
        for wait_s in [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]:
            health.failed(TP, "DiskFullError (SQLSTATE 53100)")
            clock.now_s += wait_s - 1e-6
            assert list(health.due()) == []
            clock.now_s += 2e-6
            assert list(health.due()) == [TP]
            health.resynced(TP)

    def test_quick_retries_wait_the_shortest_time(self) -> None:
        """Narrowing a record's failure retries after the shortest wait, however many failed."""
        health, clock = _health()
        for _ in range(10):
            health.failed(TP, "CheckViolationError (SQLSTATE 23514)", quick=True)
        clock.now_s += RESYNC_BACKOFF_START_S
        assert list(health.due()) == [TP] and health.failures_of(TP) == 10

    def test_claim_records_the_failures_and_the_last_kind(self) -> None:
        """A claim retrying the partition records how many failed in a row and the last kind."""
        health, _ = _health()
        health.failed(TP, "first")
        health.failed(TP, "second")
        assert health.failure(TP) == Failure(2, "second")


class TestCommitted:
    def test_a_commit_forgets_everything(self) -> None:
        """After a commit the partition is fresh, with no failure to record."""
        health, _ = _health()
        health.failed(TP, "x")
        health.committed(TP)
        assert not health.stale(TP) and not health.failing(TP) and health.failure(TP) is None


class TestRefetch:
    def test_without_failures_the_resync_is_due_at_once(self) -> None:
        """A partition rolled back with another's batch is resynced at once."""
        health, _ = _health()
        health.refetch(TP)
        assert health.stale(TP) and list(health.due()) == [TP] and not health.failing(TP)

    def test_with_failures_it_keeps_its_backoff(self) -> None:
        """A failing partition rolled back again still waits its backoff."""
        health, clock = _health()
        for _ in range(3):
            health.failed(TP, "x")
        health.refetch(TP)
        assert list(health.due()) == []
        clock.now_s += 4 * RESYNC_BACKOFF_START_S
        assert list(health.due()) == [TP]
