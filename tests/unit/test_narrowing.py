"""The narrowing of a failing batch down to its failing record, as data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processor import narrowing
from processor.narrowing import Narrowing


def _search(records: int, poison: int) -> tuple[int, int, int]:
    """Run the narrowing over `records` records at offsets 0.. with the one at `poison` failing
    for a record's reason; return (failures before it is dead-lettered, the most of them in a
    row, records committed)."""
    state: Narrowing | None = None
    offset, failures, in_a_row, most_in_a_row, committed = 0, 0, 0, 0, 0
    while not narrowing.dead_letter_due(state, offset):
        size = narrowing.batch_size(state, offset) or records - offset
        end = min(offset + size, records)
        if offset <= poison < end:
            state = narrowing.failed(state, offset, end - offset, end, records_fault=True)
            failures += 1
            in_a_row += 1
            most_in_a_row = max(most_in_a_row, in_a_row)
        else:
            in_a_row = 0
            committed += end - offset
            offset = end
            state = narrowing.committed(state, offset)
        assert failures < 100, "the search does not end"
    assert offset == poison
    return failures, most_in_a_row, committed


class TestSearch:
    @given(st.integers(1, 50_000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
    def test_finds_the_record_in_logarithmic_failures(self, case: tuple[int, int]) -> None:
        """Any record of any batch the limits admit is found within about 2 log2(size)
        failures, at most log2(size) + 2 of them in a row, with every record before it
        committed."""
        records, poison = case
        failures, in_a_row, committed = _search(records, poison)
        assert committed == poison
        assert in_a_row <= records.bit_length() + narrowing.RECORD_FAILURES_MAX
        assert failures <= 2 * records.bit_length() + narrowing.RECORD_FAILURES_MAX


class TestFailed:
    def test_halves_the_batch(self) -> None:
        """A batch of 100 that failed is retried as 50, then 25."""
        state = narrowing.failed(None, 0, 100, 100, records_fault=True)
        assert narrowing.batch_size(state, 0) == 50
        state = narrowing.failed(state, 0, 50, 50, records_fault=True)
        assert narrowing.batch_size(state, 0) == 25 and state.end_offset == 100

    def test_a_database_failure_never_makes_a_dead_letter(self) -> None:
        """A lone record failing any number of times for the database's reasons stays due."""
        state = narrowing.failed(None, 7, 1, 8, records_fault=False)
        for _ in range(10):
            state = narrowing.failed(state, 7, 1, 8, records_fault=False)
        assert not narrowing.dead_letter_due(state, 7)

    def test_a_failed_dead_letter_goes_bare(self) -> None:
        """When the dead letter itself fails, the next one is sent without the envelope."""
        state = None
        for _ in range(narrowing.RECORD_FAILURES_MAX):
            state = narrowing.failed(state, 3, 1, 4, records_fault=True)
        assert narrowing.dead_letter_due(state, 3) and not narrowing.bare_dead_letter_due(state)
        state = narrowing.failed(state, 3, 1, 4, records_fault=True)
        assert narrowing.bare_dead_letter_due(state)


class TestCommitted:
    def test_doubles_and_ends_past_the_range(self) -> None:
        """Each commit doubles the batch; past the failed range batches are whole again."""
        state = narrowing.failed(None, 0, 8, 8, records_fault=False)
        state = narrowing.committed(state, 4)
        assert narrowing.batch_size(state, 4) == 8
        assert narrowing.committed(state, 8) is None
        assert narrowing.batch_size(state, 8) is None
