"""Narrowing a failing batch down to the record that fails it. Pure.

Why: a batch is one transaction, so one record the database refuses (or the planner cannot
handle) fails its whole batch, and the same batch retried fails the same way forever: the
partition stalls and every player on it waits. Halving the batch after each failure finds the
record within about log2(batch_size_max) retries; a lone record that keeps failing for a reason a
record can cause is then dead-lettered, and the partition moves on. Each success doubles the
batch again, so a range that only failed because the database was away is soon whole again.

Why a lone record is dead-lettered only for a record's kind of failure, and only after a control:
a database that is down, full or misconfigured fails every record alike, and dead-lettering
them one by one would empty the partition into the dead-letter topic. So before a record is set
aside, two batches are written and rolled back: the record as it is (its cause may be gone by
now: then it is processed), and a made-up ordinary command (the control). Only when the control
goes through is the failure the record's; when it fails too, the failure is the database's:
nothing is set aside, the partition retries with backoff, and its stall shows in /ready,
`wallet status` and a metric.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# A lone record failing for a record's reason this many times in a row is dead-lettered (the
# first failure might have met a record-shaped coincidence; two in a row do not).
RECORD_FAILURES_MAX = 2


@dataclass(frozen=True, slots=True)
class Narrowing:
    """A failing range of a partition being narrowed down."""

    end_offset: int  # where the first failed batch ended: from here on, batches are whole again
    size_max: int  # records per batch while narrowing
    lone_failures: int  # record-kind failures in a row of the lone record at the start


def batch_size(state: Narrowing | None, next_offset: int) -> int | None:
    """How many records the next batch may hold; None for no limit."""
    if state is None or next_offset >= state.end_offset:
        return None
    return state.size_max


def failed(
    state: Narrowing | None, next_offset: int, records: int, end_offset: int, records_fault: bool
) -> Narrowing:
    """After a batch of `records` records, from next_offset to end_offset, failed alone."""
    assert records >= 1 and next_offset < end_offset
    if state is None or next_offset >= state.end_offset:
        state = Narrowing(end_offset=end_offset, size_max=records, lone_failures=0)
    end = max(state.end_offset, end_offset)
    if records > 1:
        return Narrowing(end_offset=end, size_max=records // 2, lone_failures=0)
    return Narrowing(end, 1, state.lone_failures + (1 if records_fault else 0))


def committed(state: Narrowing | None, next_offset: int) -> Narrowing | None:
    """After a batch committed and the partition moved to next_offset."""
    if state is None or next_offset >= state.end_offset:
        return None
    return replace(state, size_max=state.size_max * 2, lone_failures=0)


def dead_letter_due(state: Narrowing | None, next_offset: int) -> bool:
    """Whether the record at next_offset is to be dead-lettered instead of processed."""
    return (
        batch_size(state, next_offset) == 1
        and state is not None
        and state.lone_failures >= RECORD_FAILURES_MAX
    )


def bare_dead_letter_due(state: Narrowing | None) -> bool:
    """Whether the dead letter itself failed: then it goes without the record's envelope
    (no reply), since what the envelope holds may be what the database refuses."""
    return state is not None and state.lone_failures > RECORD_FAILURES_MAX
