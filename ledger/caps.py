"""Daily caps: the most a wallet may spend, and give away by transfer, in a UTC day (set per
user and asset by an operator, `wallet limits`, e.g. for minors). Pure.

Why checked after the decision, by the writer: the amount a command moves is known only once
it is decided (a capture of a whole hold names none), and the check must see every earlier
command of the day, those of the same batch included, in log order; the partition's single
writer is the one place that does. A command past its cap is refused (`daily_limit_exceeded`)
like any other refusal: recorded, replied, atomically with the batch.

What counts: a day's accepted spends and captures (their amounts, gross: a reversal later
does not give room back) against the spend cap; a day's accepted transfers out (a transfer
the receiver refused included: its debit happened) against the transfer cap. Holds count
when captured, which is when they spend.
"""

from __future__ import annotations

from typing import NamedTuple

from ledger.account import Rejected
from schemas.commands import CommandType
from schemas.replies import ErrorCode

DAY_MS = 86_400_000
_SPENDS = frozenset({CommandType.SPEND, CommandType.CAPTURE})
# The records that count against the spend cap, as the lookups read them (ledger.purchases
# checks each cost of a purchase as a spend).
SPENT_RECORD_TYPES = ("spend", "capture", "purchase", "conversion")


class Caps(NamedTuple):
    """A wallet's caps, and what it used of them on `day` (days since the epoch, UTC)."""

    spend_max: int | None  # None: no cap
    transfer_out_max: int | None
    day: int
    spent: int = 0
    sent: int = 0


def check(
    kind: CommandType, amount: int, caps: Caps, now_ms: int, asset: str
) -> tuple[Rejected | None, Caps]:
    """Whether an accepted command of `kind` moving `amount` stays within the caps at
    `now_ms`, and the caps with it counted (unchanged when it is refused)."""
    if kind not in _SPENDS and kind is not CommandType.TRANSFER:
        return None, caps
    assert amount > 0 and caps.spent >= 0 and caps.sent >= 0, (amount, caps)
    day = now_ms // DAY_MS
    if caps.day != day:  # a new day: nothing used yet (the lookup was of another day's)
        caps = caps._replace(day=day, spent=0, sent=0)
    if kind in _SPENDS:
        if caps.spend_max is not None and caps.spent + amount > caps.spend_max:
            return _refused("spend", caps.spend_max, caps.spent, asset), caps
        return None, caps._replace(spent=caps.spent + amount)
    if caps.transfer_out_max is not None and caps.sent + amount > caps.transfer_out_max:
        return _refused("give by transfer", caps.transfer_out_max, caps.sent, asset), caps
    return None, caps._replace(sent=caps.sent + amount)


def _refused(what: str, cap: int, used: int, asset: str) -> Rejected:
    return Rejected(
        ErrorCode.DAILY_LIMIT_EXCEEDED,
        f"this wallet may {what} at most {cap} {asset} a day (UTC); {used} used today",
    )
