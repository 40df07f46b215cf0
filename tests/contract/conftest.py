"""Each contract test runs once per implementation: on PostgreSQL (a database of the test's
own) and in memory."""

from __future__ import annotations

import pytest

from foundation.settings import Settings


@pytest.fixture(params=["postgres", "memory"])
def database(request: pytest.FixtureRequest) -> Settings | None:
    """A database of the test's own for the PostgreSQL stores; None for the memory ones."""
    if request.param == "memory":
        return None
    stack: Settings = request.getfixturevalue("stack")
    return stack
