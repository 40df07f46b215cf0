"""Monitors: operators' rules that raise an alert when an accepted transaction takes a
wallet's balance across a threshold, or its spending in a window past a value. Pure.

Why the writer evaluates them: it alone sees every transaction of a wallet in log order, with
the balances before and after; the alert then goes into the batch's transaction with the
record that raised it (its `alerts`), and the relay publishes it with the record's reply and
event, so it is published if and only if the transaction commits, whatever crashes. Alerts
never refuse anything: a monitor watches, a cap (ledger.caps) refuses.

A crossing, not a state: `balance_above` fires when a transaction takes the balance from
below the threshold to it or past it, `balance_below` from the threshold or above to below
it, `spend_over_window` when the window's spending goes from at most the value to past it.
A wallet sitting past a line raises nothing more until it crosses back and again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import NamedTuple

from ledger.caps import SPENT_RECORD_TYPES
from schemas.alerts import MonitorKind

MONITORS_MAX = 64  # per deployment: every transaction of a watched asset checks each
WINDOW_S_MIN = 60
WINDOW_S_MAX = 86_400
_ABOVE = MonitorKind.BALANCE_ABOVE.value
_BELOW = MonitorKind.BALANCE_BELOW.value
_SPEND = MonitorKind.SPEND_OVER_WINDOW.value


class Monitor(NamedTuple):
    monitor_id: str
    kind: str
    asset: str
    threshold: int
    window_s: int | None  # spend_over_window only


class Window(NamedTuple):
    """What a wallet spent in one window (its number: epoch ms // the window's length)."""

    number: int
    spent: int


class Hit(NamedTuple):
    """An alert as its record keeps it."""

    monitor_id: str
    kind: str
    threshold: int
    value: int
    window_s: int | None


# (user, asset) -> window length (s) -> what it spent in the window it was looked up in.
Spending = Mapping[tuple[str, str], Mapping[int, Window]]


class Watch(NamedTuple):
    """What a batch is watched by: the monitors, by asset, and what its wallets spent in
    each watched window (looked up before it is planned, counted on as it is)."""

    by_asset: Mapping[str, tuple[Monitor, ...]]
    spending: dict[tuple[str, str], dict[int, Window]]


NO_WATCH = Watch({}, {})


def watch(monitors: tuple[Monitor, ...], spending: Spending) -> Watch:
    by_asset: dict[str, tuple[Monitor, ...]] = {}
    for m in monitors:
        by_asset[m.asset] = (*by_asset.get(m.asset, ()), m)
    return Watch(by_asset, {k: dict(v) for k, v in spending.items()})


def window_lengths(monitors: tuple[Monitor, ...]) -> list[int]:
    """The windows to look spending up in."""
    return sorted({m.window_s for m in monitors if m.window_s is not None})


def window_number(now_ms: int, length_s: int) -> int:
    """Which window of `length_s` seconds holds `now_ms` (windows are aligned to the epoch;
    window n starts at n * length_s seconds)."""
    return now_ms // (length_s * 1000)


def alert_id(monitor_id: str, transaction_id: uuid.UUID) -> uuid.UUID:
    """The same alert's id on every publish of it (a republish, a relay's retry)."""
    return uuid.uuid5(transaction_id, monitor_id)


def check(
    watched: Watch,
    key: tuple[str, str],
    moved: tuple[str, int, int, int],
    now_ms: int,
) -> list[Hit]:
    """The alerts a transaction raises: `moved` is its type, amount, and the wallet's balance
    (available + held) before and after it. Its spending is counted in the watch."""
    monitors = watched.by_asset.get(key[1])
    if not monitors:
        return []
    type, amount, before, after = moved
    hits: list[Hit] = []
    spent = _counted(watched, key, monitors, amount if type in SPENT_RECORD_TYPES else 0, now_ms)
    for m in monitors:
        rose = m.kind == _ABOVE and before < m.threshold <= after
        fell = m.kind == _BELOW and after < m.threshold <= before
        if rose or fell:
            hits.append(Hit(m.monitor_id, m.kind, m.threshold, after, None))
        elif m.kind == _SPEND and m.window_s in spent:
            was, now = spent[m.window_s]
            if was <= m.threshold < now:
                hits.append(Hit(m.monitor_id, m.kind, m.threshold, now, m.window_s))
    return hits


def _counted(
    watched: Watch,
    key: tuple[str, str],
    monitors: tuple[Monitor, ...],
    amount: int,
    now_ms: int,
) -> dict[int, tuple[int, int]]:
    """Each watched window's spending before and after the transaction (counted on)."""
    if not amount:
        return {}
    assert amount > 0, amount
    windows = watched.spending.setdefault(key, {})
    moved: dict[int, tuple[int, int]] = {}
    for length in {m.window_s for m in monitors if m.window_s is not None}:
        number = window_number(now_ms, length)
        known = windows.get(length)
        was = known.spent if known is not None and known.number == number else 0
        windows[length] = Window(number, was + amount)
        moved[length] = (was, was + amount)
    return moved
