"""The garbage collector's settings for long-lived roles."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from foundation import collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
class TestTuneForService:
    def test_young_collections_wait_for_a_batch_worth_of_allocations(self) -> None:
        """The thresholds become the module's, far above CPython's default of 700."""
        collector.tune_for_service()
        assert gc.get_threshold() == (
            collector.YOUNG_ALLOCATIONS_MAX,
            collector.YOUNG_COLLECTIONS_PER_MIDDLE,
            collector.MIDDLE_COLLECTIONS_PER_FULL,
        )
        assert collector.YOUNG_ALLOCATIONS_MAX > 700

    def test_what_exists_at_start_is_left_out_of_later_collections(self) -> None:
        """Objects alive when the role starts are frozen: no later collection scans them."""
        gc.unfreeze()
        kept: list[object] = []
        assert any(o is kept for o in gc.get_objects())
        collector.tune_for_service()
        assert not any(o is kept for o in gc.get_objects())
