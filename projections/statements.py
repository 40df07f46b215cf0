"""A wallet's balances at a past time and its statement for a period, exact from the ledger.

Why versions, not times, bound what a read takes in: every user entry carries its account's
version (one more per entry, no gaps: a unique index and the batch check keep it so) and the
time of the batch that wrote it, read from the writer's clock. A handover of a partition to a
process on another host may set that clock back a little, so times need not grow with
versions; versions cannot go back. So "the balance before T" is the state after the account's
highest version recorded before T, and a statement of [from, to) is every entry after the
version before `from` up to the version before `to`: the opening plus the movements is the
closing, always (asserted), whatever the clocks did. Reads are rare (support, finance), so
they walk the account's version index rather than have every write keep an index by time.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from foundation.errors import WalletError
from projections import queries
from storage.db import Conn

# A statement is built in memory and sent whole: bounded. A longer period is asked for in parts.
STATEMENT_MOVEMENTS_MAX = 10_000
# Times are kept to the microsecond: "at or before T" is "before T plus one microsecond".
_TICK = timedelta(microseconds=1)
# What a read may name: the ledger holds nothing before its first entry, and PostgreSQL and
# Python both stop at year 9999 (a time past it, or made past it by _TICK, cannot be sent).
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9000, 1, 1, tzinfo=UTC)


class ReadRefusedError(WalletError):
    """A read asked for something it cannot give as asked; nothing was read."""

    code = "read_refused"


class StatementTooLongError(ReadRefusedError):
    """The period holds more movements than one statement gives: ask for shorter periods."""

    code = "statement_too_long"


class TimeOutOfRangeError(ReadRefusedError):
    """A time before the ledger could hold anything, or past what it can be compared with."""

    code = "time_out_of_range"


def _checked_time(at: datetime) -> datetime:
    assert at.tzinfo is not None, at
    if not TIME_MIN <= at <= TIME_MAX:
        raise TimeOutOfRangeError(
            f"{at.isoformat()} is outside {TIME_MIN.year}..{TIME_MAX.year}", at=at.isoformat()
        )
    return at


class AccountAt(NamedTuple):
    """One asset of a wallet as the ledger says it was at some moment."""

    version: int  # entries up to then (0: none yet)
    available: int  # the user account's balance: what a spend could take
    paid: int | None  # its paid part (None: recorded before lots, when it was not kept)
    held: int
    debt: int

    def document(self) -> dict[str, Any]:
        free = None if self.paid is None else self.available - self.paid
        return {"balance": self.available + self.held, "paid": self.paid, "free": free,
                "held": self.held, "available": self.available, "debt": self.debt,
                "version": self.version}  # fmt: skip


NOTHING_YET = AccountAt(0, 0, 0, 0, 0)


class Movement(NamedTuple):
    """One entry of a statement: what moved the user's account, and the account after it."""

    time: datetime
    transaction_id: str
    type: str
    amount: int  # signed: the change of what is available
    change: int  # signed: the change of the balance, held money included (a hold moves 0)
    after: AccountAt
    description: str | None

    def document(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "transactionId": self.transaction_id,
                "type": self.type, "amount": self.amount, "change": self.change,
                "description": self.description, **self.after.document()}  # fmt: skip


class Statement(NamedTuple):
    opening: AccountAt
    movements: list[Movement]
    closing: AccountAt


async def balances_at(conn: Conn, user_id: str, at: datetime) -> dict[str, AccountAt]:
    """Each asset the user had entries of by `at` (inclusive), as they stood then."""
    return await _states_before(conn, user_id, _checked_time(at) + _TICK, None)


async def statement(
    conn: Conn, user_id: str, start: datetime, end: datetime, asset: str | None
) -> dict[str, Statement]:
    """Per asset (or the one asked for) with entries before `end`: the balance before
    `start`, every entry in [start, end), and the balance before `end`. One snapshot for all
    its reads: between two, a batch could commit an entry stamped before `start` (a writer
    whose clock is behind) and the opening would pass the closing."""
    assert _checked_time(start) < _checked_time(end), (start, end)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _statement(conn, user_id, start, end, asset)


async def _statement(
    conn: Conn, user_id: str, start: datetime, end: datetime, asset: str | None
) -> dict[str, Statement]:
    closing = await _states_before(conn, user_id, end, asset)
    opening = await _states_before(conn, user_id, start, asset)
    spans = {a: (opening.get(a, NOTHING_YET), close) for a, close in closing.items()}
    count = sum(close.version - open_.version for open_, close in spans.values())
    if count > STATEMENT_MOVEMENTS_MAX:
        raise StatementTooLongError(
            f"the period holds {count:,} movements, more than the {STATEMENT_MOVEMENTS_MAX:,}"
            " one statement gives: ask for shorter periods",
            movements=count,
        )
    found = {}
    for code, (open_, close) in spans.items():
        movements = await _movements(conn, user_id, code, open_, close.version)
        found[code] = _checked(Statement(open_, movements, close))
    return found


def _checked(s: Statement) -> Statement:
    """Postconditions: one movement per version between the two ends, each continuing the
    balance before it (a failure is a ledger that does not chain: a bug, raised loudly)."""
    assert len(s.movements) == s.closing.version - s.opening.version, s
    available = s.opening.available
    for m in s.movements:
        available += m.amount
        assert m.after.available == available, (s.opening, m)
    assert available == s.closing.available, s
    return s


async def _states_before(
    conn: Conn, user_id: str, before: datetime, asset: str | None
) -> dict[str, AccountAt]:
    rows = await queries.latest_entries(conn, user_id, before, asset)
    return {r["asset"]: _state(r) for r in rows}


async def _movements(
    conn: Conn, user_id: str, asset: str, opening: AccountAt, to_version: int
) -> list[Movement]:
    if to_version == opening.version:
        return []
    rows = await conn.fetch(
        """
        SELECT e.created_at, e.transaction_id, c.type, e.amount, e.version, e.balance_after,
               e.paid_after, e.held_after, e.debt_after, c.description
          FROM ledger_entries e
          JOIN processed_commands c
            ON c.transaction_id = e.transaction_id AND c.asset = e.asset
           AND c.status = 'accepted'
         WHERE e.account_kind = 'user' AND e.user_id = $1 AND e.asset = $2
           AND e.version > $3 AND e.version <= $4
         ORDER BY e.version
        """,
        user_id,
        asset,
        opening.version,
        to_version,
    )
    movements, before = [], opening
    for r in rows:
        after = _state(r)
        change = after.available + after.held - before.available - before.held
        movements.append(Movement(r["created_at"], str(r["transaction_id"]), r["type"],
                                  r["amount"], change, after, r["description"]))  # fmt: skip
        before = after
    return movements


def _state(row: asyncpg.Record) -> AccountAt:
    return AccountAt(row["version"], row["balance_after"], row["paid_after"],
                     row["held_after"] or 0, row["debt_after"] or 0)  # fmt: skip


def balances_document(user_id: str, found: dict[str, AccountAt], at: datetime) -> dict[str, Any]:
    """The body of a balance read at a past time: a balance read's shape, with its time."""
    return {
        "userId": user_id, "at": at.isoformat(),
        "balances": {asset: a.available + a.held for asset, a in found.items()},
        "breakdown": {asset: a.document() for asset, a in found.items()},
    }  # fmt: skip


def document(
    user_id: str, found: dict[str, Statement], start: datetime, end: datetime
) -> dict[str, Any]:
    """The body of a statement, as JSON."""
    return {
        "userId": user_id, "from": start.isoformat(), "to": end.isoformat(),
        "assets": {code: {"opening": s.opening.document(),
                          "movements": [m.document() for m in s.movements],
                          "closing": s.closing.document()} for code, s in found.items()},
    }  # fmt: skip


CSV_COLUMNS = ("asset", "row", "time", "transactionId", "type", "amount", "change", "balance",
               "paid", "free", "held", "available", "debt", "version", "description")  # fmt: skip


def as_csv(found: dict[str, Statement], start: datetime, end: datetime) -> str:
    """A statement as CSV: per asset an `opening` row (at `from`), a `movement` row per entry
    and a `closing` row (at `to`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for code, s in found.items():
        writer.writerow({"asset": code, "row": "opening", "time": start.isoformat(),
                         **s.opening.document()})  # fmt: skip
        for m in s.movements:
            row = m.document()
            row["description"] = _inert(row["description"])
            writer.writerow({"asset": code, "row": "movement", **row})
        writer.writerow({"asset": code, "row": "closing", "time": end.isoformat(),
                         **s.closing.document()})  # fmt: skip
    return out.getvalue()


def _inert(text: str | None) -> str | None:
    """A client's text as a spreadsheet shows it, never runs it: a cell starting with one of
    = + - @ is a formula to Excel and its kin (CSV injection), so it is quoted with '."""
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text
