"""Purchases and conversions, planned and committed on one partition in memory: every part or
none, the paid share a grant keeps, and the records, replies and events a purchase makes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ledger.caps import Caps
from ledger.plan import BatchPlan, ProcessedRow, transaction_id_for
from ledger.purchases import grant_split, part_key
from schemas.codec import decode_command
from schemas.commands import Command, Part
from storage.event_store import OutboxMessage
from storage.memory_event_store import MemoryEventStore
from tests.contract.batches import planned_commands
from tests.integration.helpers import command

TOPIC = "unit.commands"


class Shop:
    """One partition of a ledger with GOLD and DIAMONDS, in memory."""

    def __init__(self) -> None:
        self.store = MemoryEventStore(("GOLD", "DIAMONDS", "GEMS"))
        self.epoch = asyncio.run(self.store.claim_partition(TOPIC, 0, "unit")).epoch
        self.offset = 0
        self.caps: dict[tuple[str, str], Caps] = {}

    def run(self, *commands: Command, at: datetime | None = None) -> BatchPlan:
        return asyncio.run(self._batch(list(commands), at))

    def rows(self, *commands: Command, at: datetime | None = None) -> list[ProcessedRow]:
        return self.run(*commands, at=at).processed_rows

    def balance(self, asset: str, user: str = "mia") -> int:
        return sum(e.amount for e in self.store.entries
                   if e.user_id == user and e.asset == asset)  # fmt: skip

    def system(self, kind: str, asset: str) -> int:
        return sum(e.amount for e in self.store.entries
                   if e.account_kind == kind and e.asset == asset)  # fmt: skip

    def lots(self, asset: str, user: str = "mia") -> list[tuple[bool, int]]:
        return sorted((lot.paid, lot.remaining)
                      for lot in self.store.lots.get((user, asset), {}).values())  # fmt: skip

    async def _batch(self, commands: list[Command], at: datetime | None) -> BatchPlan:
        position, plan = await planned_commands(self.store, TOPIC, 0, self.epoch, self.offset,
                                                commands, at, caps=self.caps)  # fmt: skip
        await self.store.commit_batch(position, plan)
        rebuilt = await self.store.unpublished(TOPIC, 0, (0, self.offset), 10_000)
        assert rebuilt == [OutboxMessage.of(r) for r in plan.outbox_rows], "rebuilt alike"
        self.offset = position.next_offset
        return plan


def buy(*costs: tuple[str, int], grants: tuple[tuple[str, int], ...] = (), **extra: Any) -> Command:
    return command("purchase", extra.pop("user", "mia"), None, asset=costs[0][0],
                   costs=[Part(asset=a, amount=n) for a, n in costs],
                   grants=[Part(asset=a, amount=n) for a, n in grants] or None,
                   sku=extra.pop("sku", "sword-of-dawn"), **extra)  # fmt: skip


def stocked(gold: int = 500, diamonds: int = 20, free_diamonds: int = 8) -> Shop:
    """mia with paid GOLD, paid DIAMONDS and a bonus of DIAMONDS."""
    shop = Shop()
    credits = (("top_up", gold, "GOLD"), ("top_up", diamonds, "DIAMONDS"),
               ("bonus", free_diamonds, "DIAMONDS"))  # fmt: skip
    shop.run(*(command(kind, "mia", n, asset) for kind, n, asset in credits if n))
    return shop


def reply_of(plan: BatchPlan) -> dict[str, Any]:
    [reply] = [orjson.loads(r.reply_value) for r in plan.outbox_rows if r.reply_value]
    return reply


class TestItemPurchase:
    def test_every_cost_is_booked_in_one_batch(self) -> None:
        """A purchase in GOLD and DIAMONDS writes one record per asset at its offset, each a
        balanced transaction consumed like a spend (paid to revenue, free to free_spent)."""
        shop = stocked()
        rows = shop.rows(buy(("GOLD", 100), ("DIAMONDS", 5)))
        assert [(r.type, r.asset, r.amount, r.status) for r in rows] == [
            ("purchase", "GOLD", 100, "accepted"),
            ("purchase", "DIAMONDS", 5, "accepted"),
        ]
        main, part = rows
        assert main.purchase_id == main.transaction_id == part.purchase_id
        assert part.idempotency_key == part_key(main.transaction_id, "DIAMONDS")
        assert {r.source_offset for r in rows} == {main.source_offset}
        assert shop.balance("GOLD") == 400 and shop.balance("DIAMONDS") == 23
        assert shop.system("revenue", "GOLD") == 100
        assert shop.system("free_spent", "DIAMONDS") == 5  # free first: the bonus paid
        assert sum(e.amount for e in shop.store.entries) == 0

    def test_its_reply_names_each_asset_it_moved(self) -> None:
        """The one reply carries the purchase's id, sku, kind and each asset's amount, paid
        part, balance and position; each record has its event."""
        shop = stocked()
        plan = shop.run(buy(("GOLD", 100), ("DIAMONDS", 5)))
        reply = reply_of(plan)
        assert reply["type"] == "purchase" and reply["status"] == "accepted"
        info = reply["purchase"]
        assert (info["kind"], info["sku"], info["refused_asset"]) == ("item", "sword-of-dawn", None)
        assert info["parts"] == [
            {"asset": "GOLD", "amount": -100, "paid": 100, "balance": 400, "available": 400,
             "position": "GOLD:2"},
            {"asset": "DIAMONDS", "amount": -5, "paid": 0, "balance": 23, "available": 23,
             "position": "DIAMONDS:3"},
        ]  # fmt: skip
        events = [orjson.loads(r.event_value) for r in plan.outbox_rows if r.event_value]
        assert [(e["asset"], e["purchase_id"], e["sku"]) for e in events] == [
            ("GOLD", info["id"], "sword-of-dawn"),
            ("DIAMONDS", info["id"], "sword-of-dawn"),
        ]

    def test_a_refused_cost_books_nothing(self) -> None:
        """A cost the wallet cannot pay refuses the whole purchase: one rejected record
        naming that asset, its own code, and no entry, lot or balance moved."""
        shop = stocked()
        plan = shop.run(buy(("GOLD", 100), ("DIAMONDS", 500)))
        [row] = plan.processed_rows
        assert (row.status, row.error_code, row.asset, row.amount) == (
            "rejected",
            "insufficient_funds",
            "DIAMONDS",
            500,
        )
        assert row.error_message is not None and row.error_message.startswith("cost DIAMONDS: ")
        assert plan.entry_rows == [] and not plan.lots_changed() and not plan.lots_opened()
        assert shop.balance("GOLD") == 500 and shop.balance("DIAMONDS") == 28
        reply = reply_of(plan)
        assert reply["purchase"]["refused_asset"] == "DIAMONDS" and reply["balance"] == 28
        assert reply["purchase"]["id"] is None and reply["purchase"]["parts"] is None

    def test_an_unknown_asset_refuses_it(self) -> None:
        """A cost in an asset that does not exist refuses the purchase (unknown_asset)."""
        [row] = stocked().rows(buy(("GOLD", 1), ("RUBIES", 1)))
        assert (row.error_code, row.asset) == ("unknown_asset", "RUBIES")

    def test_a_retry_answers_the_first_outcome(self) -> None:
        """The same purchase again is a duplicate: nothing booked twice, its reply the main
        record's, with the purchase's id (its parts: GET /wallet/purchases/{id})."""
        shop = stocked()
        sent = buy(("GOLD", 100), ("DIAMONDS", 5), key="sword-1")
        first = reply_of(shop.run(sent))
        plan = shop.run(sent)
        assert plan.processed_rows == [] and shop.balance("GOLD") == 400
        again = reply_of(plan)
        assert again["duplicate"] and again["purchase"]["id"] == first["purchase"]["id"]
        assert again["purchase"]["parts"] is None

    def test_the_same_key_for_another_purchase_is_refused(self) -> None:
        """Another sku or other costs under a used key is idempotency_key_reused."""
        shop = stocked()
        shop.run(buy(("GOLD", 100), key="k"))
        other = reply_of(shop.run(buy(("GOLD", 100), key="k", sku="shield")))
        assert other["error"]["code"] == "idempotency_key_reused"

    def test_a_daily_cap_counts_every_cost(self) -> None:
        """A cost past the wallet's daily spend cap refuses the purchase; an accepted one
        counts against the cap for the rest of the batch."""
        shop = stocked()
        day = int(datetime.now(UTC).timestamp() * 1000) // 86_400_000
        shop.caps = {("mia", "DIAMONDS"): Caps(10, None, day)}
        rows = shop.rows(buy(("GOLD", 1), ("DIAMONDS", 6)), buy(("GOLD", 1), ("DIAMONDS", 6)))
        assert [(r.status, r.error_code) for r in rows if r.asset == "DIAMONDS"] == [
            ("accepted", None),
            ("rejected", "daily_limit_exceeded"),
        ]

    def test_a_purchase_record_is_not_reversed(self) -> None:
        """A reverse naming a purchase's record is refused (a purchase is booked whole)."""
        shop = stocked()
        [main, _] = shop.rows(buy(("GOLD", 100), ("DIAMONDS", 5)))
        [refused] = shop.rows(command("reverse", "mia", None, transaction_id=main.transaction_id,
                                      reason="refund"))  # fmt: skip
        assert refused.error_code == "not_reversible" and shop.balance("GOLD") == 400


class TestLaterInTheBatch:
    def test_a_hold_a_purchase_lapsed_is_known_as_lapsed(self) -> None:
        """A hold whose expiry a purchase's part booked is expired for the rest of its batch,
        as after a spend: its name is taken, a release of it is refused hold_expired."""
        shop = stocked()
        shop.run(command("hold", "mia", 10, hold_id="H", expires_in_s=1))
        later = datetime.now(UTC) + timedelta(seconds=5)
        rows = shop.rows(buy(("GOLD", 5)), command("hold", "mia", 20, hold_id="H", expires_in_s=60),
                         command("release", "mia", None, hold_id="H"), at=later)  # fmt: skip
        assert [(r.type, r.error_code) for r in rows] == [
            ("purchase", None),
            ("hold", "hold_id_taken"),
            ("release", "hold_expired"),
        ]
        assert shop.store.holds[("mia", "GOLD", "H")].status == "expired"

    def test_a_reverse_of_a_part_in_its_batch_is_refused_not_reversible(self) -> None:
        """A reverse naming a purchase's part in the purchase's own batch is refused as it is
        later: a purchase is not reversed."""
        shop = stocked()
        sent = buy(("GOLD", 100), ("DIAMONDS", 5), key="sword-2")
        part_id = transaction_id_for("mia", part_key(transaction_id_for("mia", "sword-2"),
                                                     "DIAMONDS"))  # fmt: skip
        rows = shop.rows(sent, command("reverse", "mia", None, "DIAMONDS", transaction_id=part_id,
                                       reason="refund"))  # fmt: skip
        assert rows[-1].error_code == "not_reversible"


class TestConversion:
    def test_a_grant_keeps_the_paid_share_of_its_cost(self) -> None:
        """10 DIAMONDS (3 free, 7 paid) into 1000 GOLD: a 700 paid and a 300 free lot,
        through `exchange` of each asset."""
        shop = stocked(gold=0, diamonds=20, free_diamonds=3)
        rows = shop.rows(buy(("DIAMONDS", 10), grants=(("GOLD", 1000),), sku="gold-pack"))
        assert [(r.type, r.asset, r.amount, r.consumed_paid) for r in rows] == [
            ("conversion", "DIAMONDS", 10, 7), ("purchase_grant", "GOLD", 700, 700),
            ("purchase_grant", "GOLD", 300, 0)]  # fmt: skip
        assert shop.lots("GOLD") == [(False, 300), (True, 700)]
        assert shop.system("exchange", "DIAMONDS") == 10
        assert shop.system("exchange", "GOLD") == -1000
        assert shop.system("revenue", "DIAMONDS") == 0  # recognised when the GOLD is spent

    def test_its_reply_sums_a_grant(self) -> None:
        """The reply names the conversion and one part per asset (a grant's two lots
        summed, its position the later one)."""
        shop = stocked(gold=0, diamonds=20, free_diamonds=3)
        reply = reply_of(shop.run(buy(("DIAMONDS", 10), grants=(("GOLD", 1000),))))
        assert reply["purchase"]["kind"] == "conversion" and reply["type"] == "purchase"
        assert [(p["asset"], p["amount"], p["paid"], p["position"])
                for p in reply["purchase"]["parts"]] == [
            ("DIAMONDS", -10, 7, "DIAMONDS:3"), ("GOLD", 1000, 700, "GOLD:2")]  # fmt: skip

    def test_a_grant_past_a_balance_limit_refuses_it(self) -> None:
        """A grant the wallet may not hold refuses the conversion: nothing moves."""
        shop = stocked()
        shop.store.assets["GOLD"] = shop.store.assets["GOLD"]._replace(balance_max=600)
        [row] = shop.rows(buy(("DIAMONDS", 10), grants=(("GOLD", 1000),)))
        assert (row.type, row.error_code, row.asset) == (
            "conversion",
            "balance_limit_exceeded",
            "GOLD",
        )
        assert shop.balance("DIAMONDS") == 28

    def test_a_grant_pays_debt_first(self) -> None:
        """A wallet in debt in the granted asset pays its debt from the grant first."""
        shop = stocked()
        [credit] = shop.rows(command("top_up", "mia", 50, "GEMS"))
        shop.run(command("spend", "mia", 50, "GEMS"))
        shop.run(command("reverse", "mia", None, "GEMS", transaction_id=credit.transaction_id,
                         reason="chargeback"))  # fmt: skip
        rows = shop.rows(buy(("DIAMONDS", 10), grants=(("GEMS", 80),)))
        assert shop.balance("GEMS") == 30 and sum(r.debt_paid or 0 for r in rows) == 50
        assert shop.system("receivable", "GEMS") == 0

    def test_granted_currency_is_spent_like_any_other(self) -> None:
        """A spend of granted GOLD takes its lots: the paid part is revenue then."""
        shop = stocked(gold=0, diamonds=10, free_diamonds=0)
        shop.run(buy(("DIAMONDS", 10), grants=(("GOLD", 100),)))
        [spend] = shop.rows(command("spend", "mia", 100))
        assert spend.consumed_paid == 100 and shop.system("revenue", "GOLD") == 100


class TestValidation:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"costs": None}, "requires costs and sku"),
            ({"sku": None}, "requires costs and sku"),
            ({"costs": [{"asset": "GOLD", "amount": 1}] * 2}, "each asset once"),
            ({"asset": "DIAMONDS"}, "first cost"),
            ({"grants": [{"asset": "GOLD", "amount": 1}]}, "each asset once"),
            ({"costs": [{"asset": "GOLD", "amount": 1}, {"asset": "GEMS", "amount": 1}],
              "grants": [{"asset": "DIAMONDS", "amount": 1}]}, "exactly one cost"),
            ({"costs": [{"asset": f"A{i}", "amount": 1} for i in range(9)]}, "at most 8"),
            ({"amount": 5}, "takes no amount"),
            ({"idempotency_key": "purchase-part:x:GOLD"}, "purchase-part:"),
            ({"type": "conversion"}, "send a purchase"),
            ({"type": "purchase_grant"}, "send a purchase"),
            ({"type": "spend", "amount": 1}, "purchase only"),
            ({"sku": "has space"}, "should match pattern"),
        ],
    )  # fmt: skip
    def test_a_malformed_purchase_is_refused(self, change: dict[str, Any], message: str) -> None:
        """Each rule of a purchase's fields refuses a command breaking it (dead-lettered)."""
        document = orjson.loads(buy(("GOLD", 100)).encode()) | change
        with pytest.raises(ValidationError, match=message):
            Command.model_validate_json(orjson.dumps(document))

    def test_a_purchase_travels_whole(self) -> None:
        """A purchase's wire form decodes to the same command."""
        sent = buy(("DIAMONDS", 10), grants=(("GOLD", 1000), ("GEMS", 3)))
        assert decode_command(sent.encode(), bytes_max=10_000) == sent


class TestGrantSplit:
    @given(st.integers(1, 10**15), st.integers(1, 10**15), st.data())
    @settings(max_examples=200)
    def test_free_currency_never_becomes_paid(self, granted: int, cost: int, data: Any) -> None:
        """The paid part is the cost's paid share rounded down: never more, and the two
        parts always make the grant."""
        cost_paid = data.draw(st.integers(0, cost))
        paid, free = grant_split(granted, cost, cost_paid)
        assert paid + free == granted and paid >= 0 and free >= 0
        assert paid * cost <= granted * cost_paid < (paid + 1) * cost

    def test_all_paid_makes_one_lot(self) -> None:
        """A cost paid whole grants one paid lot (no empty free record)."""
        shop = stocked(gold=0, diamonds=10, free_diamonds=0)
        rows = shop.rows(buy(("DIAMONDS", 10), grants=(("GOLD", 1000),)))
        assert [(r.type, r.amount) for r in rows] == [("conversion", 10), ("purchase_grant", 1000)]
        assert uuid.UUID(str(rows[1].purchase_id)) == rows[0].transaction_id


class TestPages:
    def test_a_page_never_ends_inside_a_purchase(self) -> None:
        """The relay's pages end where an offset ends: a purchase's messages come together
        (or alone, whole, when they pass the page's size)."""
        shop = stocked()
        shop.run(buy(("DIAMONDS", 10), grants=(("GOLD", 1000), ("GEMS", 7))),
                 command("spend", "mia", 1))  # fmt: skip
        offsets = {}
        for limit in range(1, 9):
            page = asyncio.run(shop.store.unpublished(TOPIC, 0, (0, 3), limit))
            offsets[limit] = [m.source_offset for m in page]
        assert offsets[1] == offsets[4] == [3] * 5
        assert offsets[5] == [3] * 5 and offsets[6] == [3] * 5 + [4]


_ASSETS = ("GOLD", "DIAMONDS")
_OP = st.one_of(
    st.tuples(st.just("credit"), st.sampled_from(_ASSETS), st.integers(1, 50), st.booleans()),
    st.tuples(st.just("spend"), st.sampled_from(_ASSETS), st.integers(1, 50)),
    st.tuples(st.just("item"), st.integers(1, 40), st.integers(0, 40)),
    st.tuples(st.just("conversion"), st.sampled_from(_ASSETS), st.integers(1, 40),
              st.integers(1, 200)),
)  # fmt: skip


class _Model:
    """Each asset's paid and free totals, free taken first (the assets' spend order)."""

    def __init__(self) -> None:
        self.paid = dict.fromkeys(_ASSETS, 0)
        self.free = dict.fromkeys(_ASSETS, 0)

    def can_pay(self, costs: list[tuple[str, int]]) -> bool:
        return all(n <= self.paid[a] + self.free[a] for a, n in costs)

    def pay(self, asset: str, amount: int) -> int:
        """Take `amount`, free first; the paid part taken."""
        free = min(amount, self.free[asset])
        self.free[asset] -= free
        self.paid[asset] -= amount - free
        return amount - free

    def credit(self, asset: str, amount: int, paid: bool) -> None:
        (self.paid if paid else self.free)[asset] += amount


def _apply(model: _Model, op: tuple[Any, ...]) -> tuple[Command, bool]:
    """The command for `op`, and whether the model accepts it (updating the model)."""
    if op[0] == "credit":
        _, asset, n, paid = op
        model.credit(asset, n, paid)
        return command("top_up" if paid else "bonus", "mia", n, asset), True
    if op[0] == "spend":
        _, asset, n = op
        ok = model.can_pay([(asset, n)])
        if ok:
            model.pay(asset, n)
        return command("spend", "mia", n, asset), ok
    if op[0] == "item":
        costs = [(a, n) for a, n in zip(_ASSETS, op[1:], strict=True) if n]
        ok = model.can_pay(costs)
        for asset, n in costs if ok else ():
            model.pay(asset, n)
        return buy(*costs), ok
    _, asset, n, granted = op
    other = _ASSETS[1 - _ASSETS.index(asset)]
    ok = model.can_pay([(asset, n)])
    if ok:
        paid, free = grant_split(granted, n, model.pay(asset, n))
        model.credit(other, paid, True)
        model.credit(other, free, False)
    return buy((asset, n), grants=((other, granted),)), ok


class TestProperty:
    @given(st.lists(_OP, max_size=30), st.lists(st.integers(1, 4), min_size=30, max_size=30))
    @settings(max_examples=100, deadline=None)
    def test_any_mix_is_booked_as_the_model_says(
        self, ops: list[tuple[Any, ...]], cuts: list[int]
    ) -> None:
        """Credits, spends, item purchases and conversions in any order and any batching:
        each purchase booked whole exactly when the model can pay it, each asset's paid and
        free totals the model's (a grant keeping its cost's paid share), every asset's entries
        summing to zero, and every account loading whole."""
        shop, model = Shop(), _Model()
        sent = [_apply(model, op) for op in ops]
        rows: list[ProcessedRow] = []
        start = 0
        for size in cuts:
            if start < len(sent):
                rows += shop.rows(*(c for c, _ in sent[start : start + size]))
                start += size
        mains = [r for r in rows if not r.idempotency_key.startswith("purchase-part:")]
        assert [r.status == "accepted" for r in mains] == [ok for _, ok in sent]
        for asset in _ASSETS:
            assert shop.balance(asset) == model.paid[asset] + model.free[asset], asset
            held = shop.lots(asset)
            assert sum(n for paid, n in held if paid) == model.paid[asset], asset
            assert sum(e.amount for e in shop.store.entries if e.asset == asset) == 0
        asyncio.run(shop.store.load_accounts([("mia", a) for a in _ASSETS]))  # check()ed
