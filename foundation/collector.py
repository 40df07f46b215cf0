"""The garbage collector's settings for the long-lived roles (processor, projector, API, up).

Why: CPython's default (a young collection every 700 container allocations) is tuned for
short scripts. A partition's writer allocates tens of container objects per command (records,
entries, replies, the new account state), which live until the batch commits: at the default
they survive young collections, are promoted and scanned again, and push full collections
that walk every cached account with its lots. Measured with benchmarks/plan_path.py, about a
third of planning time went to the collector. Collecting young objects every 50,000
allocations lets a batch's objects die young, at the cost of a few megabytes more garbage
between collections; freezing what exists once the role has started (modules, schemas,
settings) keeps it out of every later full collection.
"""

from __future__ import annotations

import gc

YOUNG_ALLOCATIONS_MAX = 50_000  # container allocations between young collections (default 700)
# The older generations keep CPython's ratios: raising them too gave nothing measurable, and
# would leave cyclic garbage (tracebacks, cancelled tasks) waiting far longer to be freed.
YOUNG_COLLECTIONS_PER_MIDDLE = 10
MIDDLE_COLLECTIONS_PER_FULL = 10


def tune_for_service() -> None:
    """Set the thresholds above and freeze what the process holds so far; call once, before
    the role's work starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(
        YOUNG_ALLOCATIONS_MAX, YOUNG_COLLECTIONS_PER_MIDDLE, MIDDLE_COLLECTIONS_PER_FULL
    )
