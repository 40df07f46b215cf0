"""Crash points for the fault tests: the processor exits at once, as if killed, at a named
point of the write path when a batch holds a record of a named type.

Why inside the process and not a kill from outside: a test that must kill the sender's
processor after a transfer's debit is committed and before its outbox publishes the next step
has a window of a millisecond or two; a kill from outside lands there by luck. Set through
WALLET_CRASH_AT ("POINT:TYPE", e.g. "after_commit:transfer_in"); never in production (the
process would exit at the first such batch, and again after every restart).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

import structlog

log = structlog.get_logger("wallet.processor")

# before_commit: the batch is planned, nothing written. after_commit: written, nothing of it
# published. after_publish: its messages are on the broker, the outbox watermark not stored.
POINTS = ("before_commit", "after_commit", "after_publish")
EXIT_CODE = 70  # what the fault tests expect of a process that reached its crash point


@dataclass(frozen=True, slots=True)
class CrashPoint:
    point: str
    type: str  # a command type, as records name it

    @classmethod
    def parse(cls, spec: str | None) -> CrashPoint | None:
        if spec is None:
            return None
        point, _, type = spec.partition(":")
        assert point in POINTS and type, spec  # the setting's pattern says so
        return cls(point, type)

    def reached(self, point: str, types: Collection[str]) -> None:
        """Exit now (no cleanup, no flush: as a kill would) if this is the point and the
        batch holds a record of the type."""
        if point == self.point and self.type in types:
            log.error("crash point reached; exiting", point=point, type=self.type)
            os._exit(EXIT_CODE)
