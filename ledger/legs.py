"""The system side of an accepted transaction, derived from its record alone: the planner, the
events rebuilt from records and `wallet verify` all derive legs here, so the three agree."""

from __future__ import annotations

from typing import NamedTuple

from schemas.commands import CommandType
from schemas.events import AccountKind

Legs = tuple[tuple[AccountKind, int], ...]

# By plain strings: looking an enum up by value (CommandType(type)) costs about 3 us.
_SPEND = CommandType.SPEND.value
_EXPIRE = CommandType.EXPIRE.value
_HOLD = CommandType.HOLD.value
_CAPTURE = CommandType.CAPTURE.value
_RELEASE = CommandType.RELEASE.value
_REVERSE = CommandType.REVERSE.value
_TRANSFER = CommandType.TRANSFER.value
# A transfer's debit goes into `transfers`; its credit or its refund comes out of it.
_FROM_TRANSFERS = frozenset({CommandType.TRANSFER_IN.value, CommandType.TRANSFER_REFUND.value})
_PURCHASE = CommandType.PURCHASE.value  # an item purchase's cost: consumed like a spend
_CONVERSION = CommandType.CONVERSION.value  # a conversion's cost: into `exchange`
_PURCHASE_GRANT = CommandType.PURCHASE_GRANT.value  # a conversion's grant: out of `exchange`
_CREDIT_SOURCE = {CommandType.TOP_UP.value: AccountKind.TREASURY,
                  CommandType.BONUS.value: AccountKind.BONUS_POOL}  # fmt: skip
SPENT_TYPES = frozenset({_SPEND, _CAPTURE})  # what a reverse gives back to lots
CREDIT_TYPES = frozenset(_CREDIT_SOURCE)  # what a reverse takes back (into debt if spent)


class Extras(NamedTuple):
    """What a transaction moved besides its type's own legs (all 0 for most)."""

    expired: int = 0  # lots whose expiry had come, booked out to `expired`
    released: int = 0  # held money back to the balance, out of `holds`
    debt_paid: int = 0  # what of a credit, or of currency given back, paid debt: `receivable`
    debt_added: int = 0  # a reversed credit's part that had been spent, out of `receivable`
    reversed_type: str | None = None  # a reverse: what it undid
    unexpired: int = 0  # a reversed credit's part expiry had booked out, back from `expired`


NO_EXTRAS = Extras()


def _spent(amount: int, consumed_paid: int | None, sign: int) -> Legs:
    """A spend's paid part to revenue and free part to free_spent (sign -1: given back). A
    spend recorded before lots existed, its paid part unknown, went to revenue whole."""
    if consumed_paid is None or consumed_paid == amount:
        return ((AccountKind.REVENUE, sign * amount),)
    if not consumed_paid:
        return ((AccountKind.FREE_SPENT, sign * amount),)
    return (
        (AccountKind.REVENUE, sign * consumed_paid),
        (AccountKind.FREE_SPENT, sign * (amount - consumed_paid)),
    )


# The types whose own legs are one system account moved by their amount (+1) or against it
# (-1): a hold into `holds`, a release out of it; a transfer into `transfers`, its credit or
# refund out of it; a conversion's cost into `exchange`, its grant out of it.
_ONE_LEG = {
    _HOLD: (AccountKind.HOLDS, 1), _RELEASE: (AccountKind.HOLDS, -1),
    _TRANSFER: (AccountKind.TRANSFERS, 1),
    **dict.fromkeys(_FROM_TRANSFERS, (AccountKind.TRANSFERS, -1)),
    _CONVERSION: (AccountKind.EXCHANGE, 1), _PURCHASE_GRANT: (AccountKind.EXCHANGE, -1),
}  # fmt: skip


def _own(type: str, amount: int, consumed_paid: int | None, extras: Extras) -> Legs:
    """The legs of the type itself."""
    if type in _CREDIT_SOURCE:
        return ((_CREDIT_SOURCE[type], -amount),)
    if type in (_SPEND, _PURCHASE):
        return _spent(amount, consumed_paid, 1)
    one = _ONE_LEG.get(type)
    if one is not None:
        return ((one[0], one[1] * amount),)
    if type == _EXPIRE:
        return ((AccountKind.EXPIRED, amount),) if amount else ()
    if type == _CAPTURE:
        return ((AccountKind.HOLDS, -amount), *_spent(amount, consumed_paid, 1))
    assert type == _REVERSE and extras.reversed_type is not None, (type, extras)
    if extras.reversed_type in SPENT_TYPES:
        return _spent(amount, consumed_paid, -1)
    return ((_CREDIT_SOURCE[extras.reversed_type], amount),)


def system_legs(type: str, amount: int, consumed_paid: int | None, extras: Extras) -> Legs:
    """The system side of an accepted transaction, from its record: its type's own legs
    (a credit's source; a spend's or capture's paid part to revenue, free part to
    free_spent, as an item purchase's cost; a conversion's cost into `exchange`, its
    grant out of it; a hold into `holds`, a release out of it; a reverse the undone type's legs
    backwards), then what it booked out as expired, gave back from holds, or moved to or
    from `receivable` (debt paid by a credit, debt left by a reversed credit)."""
    legs = _own(type, amount, consumed_paid, extras)
    if extras == NO_EXTRAS:
        return legs
    # Moves the same way into or out of one account are one leg (a capture's rest joins its
    # own `holds` leg); opposite moves stay two (a hold opened as a lapsed one is given
    # back): netted, they could cancel out and leave a transaction with no system leg.
    merged = list(legs)
    more = (
        (AccountKind.EXPIRED, extras.expired - extras.unexpired),
        (AccountKind.HOLDS, -extras.released),
        (AccountKind.RECEIVABLE, extras.debt_paid - extras.debt_added),
    )
    for kind, moved in (leg for leg in more if leg[1]):
        same = [i for i, (k, n) in enumerate(merged) if k is kind and (n > 0) == (moved > 0)]
        if same:
            merged[same[0]] = (kind, merged[same[0]][1] + moved)
        else:
            merged.append((kind, moved))
    return tuple(merged)


def extras(
    expired: int | None,
    released: int | None,
    debt_paid: int | None,
    debt_added: int | None,
    reversed_type: str | None,
    unexpired: int | None = None,
) -> Extras:
    """A record's extras (its columns are NULL where nothing moved)."""
    if not (expired or released or debt_paid or debt_added or reversed_type):
        return NO_EXTRAS
    return Extras(expired or 0, released or 0, debt_paid or 0, debt_added or 0, reversed_type,
                  unexpired or 0)  # fmt: skip
