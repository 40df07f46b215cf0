"""Purchases: what a `purchase` command books, decided whole before anything is written. Pure.

A purchase pays 1-8 costs and receives 0-8 grants on the buyer's partition. Every asset of a
user lives on the user's partition, so one writer decides every part and one batch
transaction commits them: no saga, unlike a transfer.

Why one record per asset and not one record for the purchase: everything else in the ledger
is one record = one (user, key) = one asset = one transaction with one user leg (the batch
trigger, `wallet verify`, lots named by their credit, history, statements). A purchase is
written as several such records, all at its command's offset and in one transaction: the
*main record* (the command's own key) books the first cost, and each further part is a record
under a reserved key derived from the purchase (`purchase-part:<purchase id>:<ASSET>`, a
grant's lot with `:paid` or `:free` after it), so each part happens once whatever is retried.

Record types: `purchase` is an item purchase's cost (consumed like a spend: its paid part to
`revenue`, its free part to `free_spent`); a conversion's cost is `conversion` (into the
asset's `exchange` account) and its grants are `purchase_grant` (out of `exchange`, each
opening a lot). A grant keeps the paid share of its cost, rounded down: for G granted against
a cost C of which p was paid, a paid lot of floor(G * p / C) and a free lot of the rest, so
revenue is recognised when the granted currency is consumed and free currency never becomes
paid. That is why a conversion has exactly one cost (schemas.commands).

All or none: each part is decided on the account as the parts before it left it, in order
(costs as given, then grants); the first refusal refuses the purchase, and nothing decided
here has touched the batch's state yet (the planner writes the parts only when all were
accepted). A refused purchase is one rejected record naming the asset that refused it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import NamedTuple

from ledger import legs
from ledger.account import Accepted, AccountState, Assets, Rejected
from ledger.caps import Caps
from ledger.caps import check as check_caps
from ledger.decide import decide
from schemas.commands import PURCHASE_PART_KEY_PREFIX, Command, CommandType

PART_KEY_PREFIX = PURCHASE_PART_KEY_PREFIX
ITEM = CommandType.PURCHASE.value
CONVERSION = CommandType.CONVERSION.value
GRANT = CommandType.PURCHASE_GRANT.value
TYPES = frozenset({ITEM, CONVERSION, GRANT})
COSTS = frozenset({ITEM, CONVERSION})
# The most records one purchase writes: a conversion's cost and two lots per grant asset.
RECORDS_MAX = 1 + 2 * 8


class Part(NamedTuple):
    """One record of an accepted purchase: its type, key, transaction and decision."""

    type: str
    key: str
    transaction_id: uuid.UUID
    asset: str
    amount: int
    decision: Accepted
    before: AccountState  # the account as the parts before it left it


class Refused(NamedTuple):
    """A refused purchase: the part that refused it, and its account as it stood."""

    type: str  # the main record's type (purchase or conversion)
    asset: str
    amount: int
    before: AccountState
    rejected: Rejected


class Decided(NamedTuple):
    parts: list[Part]  # the main record's first
    caps: dict[tuple[str, str], Caps]  # the capped accounts' caps with the costs counted


def part_key(purchase_id: uuid.UUID, asset: str, lot: str | None = None) -> str:
    """The reserved key of a purchase's record for `asset` (a grant: its paid or free lot)."""
    return f"{PART_KEY_PREFIX}{purchase_id}:{asset}" + (f":{lot}" if lot else "")


def grant_split(granted: int, cost: int, cost_paid: int) -> tuple[int, int]:
    """A grant's paid and free parts: the paid share of its cost, rounded down."""
    assert 0 <= cost_paid <= cost and cost > 0 and granted > 0, (granted, cost, cost_paid)
    paid = granted * cost_paid // cost
    return paid, granted - paid


class Context(NamedTuple):
    """What deciding a purchase needs besides the command."""

    account_of: Callable[[str], AccountState]  # the buyer's account of an asset, before it
    assets: Assets
    now_ms: int
    caps: Mapping[tuple[str, str], Caps]
    transaction_id_for: Callable[[str, str], uuid.UUID]


def decide_purchase(command: Command, ctx: Context) -> Decided | Refused:
    """Every part of the purchase decided in order (costs as given, then each grant's paid
    and free lots), or the first refusal."""
    assert command.type is CommandType.PURCHASE and command.costs and command.sku
    user = command.user_id
    purchase_id = ctx.transaction_id_for(user, command.idempotency_key)
    main_type = CONVERSION if command.grants else ITEM
    state: dict[str, AccountState] = {}
    caps = dict(ctx.caps)
    parts: list[Part] = []

    def book(type: str, asset: str, amount: int, lot: str | None, named: int) -> Refused | None:
        """Decide one part (`named`: the amount a refusal names: a grant's whole)."""
        key = part_key(purchase_id, asset, lot) if parts else command.idempotency_key
        tx_id = ctx.transaction_id_for(user, key)
        before = state.get(asset) or ctx.account_of(asset)
        decided = _part(command, (type, asset, amount, lot == "paid"), before, ctx, tx_id, caps)
        if isinstance(decided, Rejected):
            return Refused(main_type, asset, named, ctx.account_of(asset),
                           _named(type, asset, decided))  # fmt: skip
        state[asset] = decided.account
        parts.append(Part(type, key, tx_id, asset, amount, decided, before))
        return None

    for cost in command.costs:
        if refused := book(main_type, cost.asset, cost.amount, None, cost.amount):
            return refused
    for grant in command.grants or ():
        paid_for = parts[0].decision  # a conversion's one cost
        assert paid_for.amount is not None and paid_for.consumed_paid is not None
        split = grant_split(grant.amount, paid_for.amount, paid_for.consumed_paid)
        for amount, lot in zip(split, ("paid", "free"), strict=True):
            if amount and (refused := book(GRANT, grant.asset, amount, lot, grant.amount)):
                return refused
    return Decided(parts, caps)


def _part(
    command: Command,
    part: tuple[str, str, int, bool],
    account: AccountState,
    ctx: Context,
    tx_id: uuid.UUID,
    caps: dict[tuple[str, str], Caps],
) -> Accepted | Rejected:
    """One part (type, asset, amount, a paid lot?) decided as the command it books like: a
    cost as a spend, a grant as a top-up (its paid lot) or a bonus (its free lot); then its
    legs are its own type's. A capped cost counts against the daily spend cap."""
    type, asset, amount, paid = part
    kind = CommandType.SPEND if type in COSTS else (
        CommandType.TOP_UP if paid else CommandType.BONUS)  # fmt: skip
    alike = command.model_copy(update={"type": kind, "asset": asset, "amount": amount,
                                       "costs": None, "grants": None, "sku": None})  # fmt: skip
    decision = decide(alike, account, ctx.assets, tx_id, ctx.now_ms)
    if isinstance(decision, Rejected):
        return decision
    key = (command.user_id, asset)
    if type in COSTS and key in caps:
        refused, caps[key] = check_caps(CommandType.SPEND, amount, caps[key], ctx.now_ms, asset)
        if refused is not None:
            return refused
    if type == GRANT:  # what its record says of its lot: all of it paid, or none
        decision = decision._replace(consumed_paid=amount if paid else 0)
    return _relegged(type, decision)


def _relegged(type: str, decision: Accepted) -> Accepted:
    """The decision with the legs of the record's own type (the user's leg unchanged)."""
    assert decision.amount is not None
    extras = legs.extras(decision.expired_besides, decision.released, decision.debt_paid,
                         decision.debt_added, None, decision.unexpired)  # fmt: skip
    system = legs.system_legs(type, decision.amount, decision.consumed_paid, extras)
    assert -sum(n for _, n in system) == decision.user_amount, (type, decision)
    return decision._replace(legs=system)


def _named(type: str, asset: str, rejected: Rejected) -> Rejected:
    """The part's own refusal (callers branch on its code), its message naming the part."""
    part = "grant" if type == GRANT else "cost"
    return Rejected(rejected.code, f"{part} {asset}: {rejected.message}")
