"""Planning a batch: duplicates, key reuse, refusals and the zero-sum postcondition."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.account import Asset
from ledger.plan import (
    BatchContext,
    Intake,
    ProcessedRow,
    payload_hash,
    plan_batch,
    transaction_id_for,
)
from messaging.kafka import partition_for
from processor.intake import IntakeRules, admit
from schemas.commands import Command
from tests.integration.helpers import command
from tests.unit.ledger_harness import Ledger

CTX = BatchContext("cmds", 0, 0, datetime(2026, 1, 1, tzinfo=UTC))
ASSETS = {"GOLD": Asset()}


def _items(*commands: Command) -> list[Intake]:
    return [
        Intake(i, c.user_id.encode(), c.encode(), c, payload_hash(c))
        for i, c in enumerate(commands)
    ]


class TestLots:
    def test_each_credit_writes_the_lot_it_opened(self) -> None:
        """A top-up then a bonus (which free_first puts before the paid lot): the batch writes
        each credit's own lot, named by its transaction, of its kind and amount."""
        plan = plan_batch(CTX, _items(command("top_up", "u", 5), command("bonus", "u", 7)),
                          {}, {}, ASSETS)  # fmt: skip
        written = {(lot.lot_id, lot.paid, lot.remaining) for lot in plan.lots.values()}
        ids = [row.transaction_id for row in plan.processed_rows]
        assert written == {(ids[0], True, 5), (ids[1], False, 7)}

    def test_lots_opened_are_copied_and_lots_open_before_are_changed(self) -> None:
        """Of a wallet's earlier lot, a lot opened and used up, and a lot opened and left
        open in one batch: the new open lot is to copy in, the earlier lot (drawn on) to
        change, and the lot opened and used up within the batch is written nowhere."""
        first = plan_batch(CTX, _items(command("top_up", "u", 5)), {}, {}, ASSETS)
        batch = [command("bonus", "u", 3), command("spend", "u", 4), command("top_up", "u", 9)]
        plan = plan_batch(CTX, _items(*batch), {}, first.accounts, ASSETS)
        earlier = first.processed_rows[0].transaction_id
        _, _, left_open = (row.transaction_id for row in plan.processed_rows)
        assert [(lot.lot_id, lot.remaining) for lot in plan.lots_opened()] == [(left_open, 9)]
        assert [(lot.lot_id, lot.remaining) for lot in plan.lots_changed()] == [(earlier, 4)]


class TestExpiry:
    def test_a_batch_books_a_lot_out_once_and_rebuilds_the_same_event(self) -> None:
        """A bonus expiring before the batch's time: the next command's transaction books it
        out (its record says how much, its event has the expired leg), a later `expire`
        finds nothing, and each record's event rebuilt from it balances."""
        gone_at = CTX.processed_at - timedelta(seconds=1)
        old = command("bonus", "u", 7).model_copy(update={"expires_at": gone_at})
        early = BatchContext("cmds", 0, 0, gone_at - timedelta(seconds=1))
        opened = plan_batch(early, _items(old), {}, {}, ASSETS)
        plan = plan_batch(CTX, _items(command("top_up", "u", 5), command("expire", "u", None)),
                          {}, opened.accounts, ASSETS)  # fmt: skip
        top_up, expire = plan.processed_rows
        assert (top_up.expired_amount, top_up.balance_after, expire.status) == (7, 5, "rejected")
        assert expire.error_code == "nothing_to_expire" and expire.amount is None
        event = orjson.loads(plan.outbox_rows[0].event_value or b"")
        assert [(e["account"], e["amount"]) for e in event["entries"]] == [
            ("user", -2), ("treasury", -5), ("expired", 7)]  # fmt: skip
        assert sum(row.amount for row in plan.entry_rows) == 0

    def test_an_expire_records_what_it_booked_out_as_its_amount(self) -> None:
        """An accepted `expire`: its amount is what it booked out, nothing besides it."""
        gone_at = CTX.processed_at - timedelta(seconds=1)
        old = command("bonus", "u", 7).model_copy(update={"expires_at": gone_at})
        early = BatchContext("cmds", 0, 0, gone_at - timedelta(seconds=1))
        opened = plan_batch(early, _items(old), {}, {}, ASSETS)
        plan = plan_batch(CTX, _items(command("expire", "u", None)), {}, opened.accounts, ASSETS)
        (row,) = plan.processed_rows
        assert (row.amount, row.expired_amount, row.balance_after) == (7, None, 0)
        assert sorted((e.account_kind, e.amount) for e in plan.entry_rows) == [
            ("expired", 7), ("user", -7)]  # fmt: skip


class TestPlan:
    def test_in_batch_duplicate_is_answered_once(self) -> None:
        """A key repeated inside one batch is decided once and answered as a duplicate."""
        first = command("top_up", "u", 10, key="a")
        again = first.model_copy(update={"command_id": command("top_up", "u", 1).command_id})
        plan = plan_batch(CTX, _items(first, again), {}, {}, ASSETS)
        assert len(plan.processed_rows) == 1 and len(plan.entry_rows) == 2
        replies = [orjson.loads(row.reply_value or b"") for row in plan.outbox_rows]
        assert [r["duplicate"] for r in replies] == [False, True]
        assert replies[0]["transaction_id"] == replies[1]["transaction_id"]

    def test_key_reuse_with_other_payload(self) -> None:
        """The same key with another amount is refused and not recorded."""
        plan = plan_batch(
            CTX, _items(command("top_up", "u", 10, key="a"), command("top_up", "u", 11, key="a")),
            {}, {}, ASSETS,
        )  # fmt: skip
        second = orjson.loads(plan.outbox_rows[1].reply_value or b"")
        assert second["error"]["code"] == "idempotency_key_reused"
        assert len(plan.processed_rows) == 1

    def test_balances_carry_through_the_batch(self) -> None:
        """Decisions later in a batch see the balances of earlier ones."""
        plan = plan_batch(
            CTX, _items(command("top_up", "u", 10), command("spend", "u", 10),
                        command("spend", "u", 1)), {}, {}, ASSETS,
        )  # fmt: skip
        assert [orjson.loads(r.reply_value or b"")["status"] for r in plan.outbox_rows] == [
            "accepted", "accepted", "rejected"]  # fmt: skip
        assert sum(row.amount for row in plan.entry_rows) == 0


class TestTransactionIds:
    def test_one_id_per_user_and_key_in_uuid_form(self) -> None:
        """A (user, key) always derives the same id, any other pair another one; each id is an
        RFC 4122 UUID of version 8."""
        first = transaction_id_for("ana", "k1")
        assert transaction_id_for("ana", "k1") == first
        pairs = [("ana", "k2"), ("bob", "k1"), ("an", "ak1")]
        others = {transaction_id_for(user, key) for user, key in pairs}
        assert first not in others and len(others) == 3
        assert (first.version, first.variant) == (8, uuid.RFC_4122)


class TestOutcomes:
    def test_one_outcome_per_record_in_offset_order(self) -> None:
        """Each record gets its type, outcome and error code, in order: what the metrics count
        and the log lines say."""
        first = command("top_up", "u", 10, key="a")
        items = _items(
            first,
            command("spend", "u", 99),
            command("top_up", "u", 11, key="a"),
            first.model_copy(update={"command_id": command("bonus", "u", 1).command_id}),
        )
        broken = admit(
            IntakeRules(partitions=1, command_bytes_max=1024, forbidden_reply_topics=frozenset()),
            0,
            4,
            b"u",
            b"{",
        )
        plan = plan_batch(CTX, [*items, broken], {}, {}, ASSETS)
        assert [tuple(d) for d in plan.decided] == [
            ("top_up", "accepted", ""),
            ("spend", "rejected", "insufficient_funds"),
            ("top_up", "rejected", "idempotency_key_reused"),
            ("top_up", "duplicate", ""),
            ("unknown", "dead_lettered", "not_json"),
        ]  # fmt: skip


class TestIntake:
    def test_wrong_partition_is_refused(self) -> None:
        """A command on a partition its user does not hash to is refused, not processed."""
        cmd = command("top_up", "u", 1)
        rules = IntakeRules(
            partitions=12, command_bytes_max=65536, forbidden_reply_topics=frozenset()
        )
        wrong = (partition_for("u", 12) + 1) % 12
        refused = admit(rules, wrong, 0, b"u", cmd.encode())
        assert not isinstance(refused.admitted, Command)
        assert refused.admitted.code == "wrong_partition"
        admitted = admit(rules, partition_for("u", 12), 0, b"u", cmd.encode())
        assert admitted.admitted == cmd

    def test_reply_to_an_input_topic_is_refused(self) -> None:
        """A reply_to naming the commands topic would loop; it is refused."""
        cmd = command("top_up", "u", 1, reply_to="wallet.commands")
        rules = IntakeRules(12, 65536, frozenset({"wallet.commands"}))
        refused = admit(rules, partition_for("u", 12), 0, b"u", cmd.encode())
        assert refused.admitted.code == "forbidden_reply_topic"  # type: ignore[union-attr]


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["top_up", "bonus", "spend"]),
        st.sampled_from(["ann", "bob", "cy"]),
        st.integers(1, 50),
        st.integers(0, 12),  # idempotency keys repeat often
    ),
    max_size=60,
)


class TestAgainstAModel:
    @given(steps=_STEPS)
    @settings(max_examples=300, deadline=None)
    def test_balances_follow_a_plain_model(self, steps: list[tuple[str, str, int, int]]) -> None:
        """For any sequence of valid commands, repeated keys included, the planned balances
        equal a plain model (a key's first use decides; spends never overdraw), and no entry
        leaves a balance below zero."""
        commands = [command(t, user, amount, key=f"k{key}") for t, user, amount, key in steps]
        plan = plan_batch(CTX, _items(*commands), {}, {}, ASSETS)
        model: dict[str, int] = {}
        used: set[tuple[str, int]] = set()
        for t, user, amount, key in steps:
            if (user, key) in used:
                continue
            used.add((user, key))
            balance = model.get(user, 0)
            if t != "spend":
                model[user] = balance + amount
            elif amount <= balance:
                model[user] = balance - amount
        for user in ("ann", "bob", "cy"):
            planned = plan.accounts.get((user, "GOLD"))
            assert (planned.balance if planned else 0) == model.get(user, 0)
        assert all(
            row.balance_after >= 0 for row in plan.entry_rows if row.balance_after is not None
        )
        assert len(plan.processed_rows) == len(used)


# (kind, amount, seconds the clock moves first, which earlier hold or transaction it names)
_ECONOMY_STEPS = st.lists(
    st.tuples(
        # Credits and holds twice as likely: resolutions need open holds, holds need money.
        st.sampled_from(["top_up", "top_up", "bonus", "spend", "hold", "hold", "capture",
                         "capture", "release", "reverse", "expire"]),
        st.integers(1, 40), st.integers(0, 20), st.integers(0, 1_000),
    ),
    max_size=50,
)  # fmt: skip


@dataclass
class _Hold:
    amount: int
    expires_ms: int
    status: str = "open"


@dataclass
class _Model:
    """What the wallet must hold, kept without lots: available, holds, debt."""

    available: int = 0
    debt: int = 0
    holds: dict[str, _Hold] = field(default_factory=dict)
    done: list[ProcessedRow] = field(default_factory=list)  # accepted, in order
    reversed: set[uuid.UUID] = field(default_factory=set)
    unbooked: int = 0  # given back by lapsed holds, not yet booked by an accepted transaction
    returned: int = 0  # given back by the command at hand (a release, a reversed spend...)

    def lapse(self, now_ms: int) -> bool:
        """Holds whose expiry has come count as given back (the next accepted transaction
        books it); whether any lapsed hold waits for its booking."""
        lapsed = [h for h in self.holds.values() if h.status == "open" and h.expires_ms <= now_ms]
        for hold in lapsed:
            self.available += hold.amount
            self.unbooked += hold.amount
            hold.status = "expired"
        self.returned = 0
        return bool(self.unbooked)

    def book(self) -> None:
        """An accepted transaction: what it and lapsed holds gave back pays debt first."""
        pay = min(self.debt, self.unbooked + self.returned, self.available)
        self.debt -= pay
        self.available -= pay
        self.unbooked = 0

    def held(self) -> int:
        return sum(h.amount for h in self.holds.values() if h.status == "open")

    def expect(self, kind: str, amount: int, name: str, lapsed: bool) -> str | None:
        """The error code the command must get (None: accepted), the model moved if so."""
        if kind in ("top_up", "bonus"):
            paid = min(self.debt, amount)
            self.debt -= paid
            self.available += amount - paid
            return None
        if kind in ("spend", "hold"):
            if self.debt:
                return "in_debt"
            if amount > self.available:
                return "insufficient_funds"
            self.available -= amount
            return None
        if kind == "expire":
            return None if lapsed else "nothing_to_expire"
        return self._resolve(kind, amount, name)

    def _resolve(self, kind: str, amount: int, name: str) -> str | None:
        hold = self.holds.get(name)
        if hold is None:
            return "hold_not_found"
        if hold.status != "open":
            return {"captured": "hold_already_captured", "released": "hold_already_released",
                    "expired": "hold_expired"}[hold.status]  # fmt: skip
        taken = amount if kind == "capture" else 0
        if taken > hold.amount:
            return "capture_exceeds_hold"
        self.available += hold.amount - taken
        self.returned = hold.amount - taken
        hold.status = "captured" if kind == "capture" else "released"
        return None


def _economy_command(kind: str, amount: int, pick: int, model: _Model, now_ms: int) -> Command:
    if kind == "hold":
        return command(
            kind, "u", amount, hold_id=f"h{len(model.holds)}", expires_in_s=1 + pick % 30
        )
    if kind in ("capture", "release"):
        # One of the latest holds mostly (open ones are worth resolving), now and then one
        # that never existed.
        names = list(model.holds)[-3:]
        name = names[pick % len(names)] if names and pick % 10 else f"h{len(model.holds)}"
        part = 1 + amount % 8  # mostly within what a hold keeps
        return command(kind, "u", part if kind == "capture" else None, hold_id=name)
    if kind == "reverse":
        target = model.done[pick % len(model.done)].transaction_id if model.done else uuid.uuid4()
        return command(kind, "u", None, transaction_id=target, reason="property")
    return command(kind, "u", None if kind == "expire" else amount)


class TestEconomyAgainstAModel:
    @settings(max_examples=100, deadline=None)
    @given(steps=_ECONOMY_STEPS)
    def test_any_sequence_keeps_the_model_and_the_ledger(
        self, steps: list[tuple[str, int, int, int]]
    ) -> None:
        """Any sequence of credits, spends, holds, captures, releases, reversals, expires and
        clock steps, planned and committed batch by batch: every outcome is the model's; the
        wallet's available, held and debt are the model's; the user's entries sum to its
        balance, the holds account's to what is held, receivable's to minus the debt; each
        hold is resolved at most once."""
        ledger, model = Ledger(), _Model()
        for kind, amount, step_s, pick in steps:
            ledger.later(step_s)
            found = _economy_command(kind, amount, pick, model, ledger.now_ms)
            lapsed = model.lapse(ledger.now_ms)
            [row] = ledger.send(found)
            if kind == "reverse":
                _check_reverse(model, row, found)
            else:
                expected = model.expect(kind, found.amount or 0, found.hold_id or "", lapsed)
                assert row.error_code == expected, (kind, row)
                if kind == "hold" and row.status == "accepted":
                    model.holds[found.hold_id or ""] = _Hold(
                        amount, ledger.now_ms + 1000 * (found.expires_in_s or 0)
                    )
            if row.status == "accepted":
                model.book()
                model.done.append(row)
                account = ledger.account()
                assert (account.balance, account.held, account.debt) == (
                    model.available, model.held(), model.debt)  # fmt: skip
        _check_entries(ledger)


def _check_reverse(model: _Model, row: ProcessedRow, sent: Command) -> None:
    """A reverse's outcome against the model (what a credit's lot still holds is the
    ledger's to say: the model checks the debt it leaves is what was not left)."""
    target = next((r for r in model.done if r.transaction_id == sent.transaction_id), None)
    if target is None:
        assert row.error_code == "transaction_not_found"
    elif target.transaction_id in model.reversed:
        assert row.error_code == "already_reversed"
    elif target.type not in ("spend", "capture", "top_up", "bonus"):
        assert row.error_code == "not_reversible"
    else:
        assert row.status == "accepted" and target.amount is not None, row
        model.reversed.add(target.transaction_id or uuid.uuid4())
        if target.type in ("spend", "capture"):
            model.available += target.amount
            model.returned = target.amount
        else:
            owed, unexpired = row.debt_added or 0, row.unexpired_amount or 0
            assert 0 <= owed + unexpired <= target.amount and not unexpired  # nothing expires
            model.available -= target.amount - owed
            model.debt += owed


def _check_entries(ledger: Ledger) -> None:
    account = ledger.account()
    totals: Counter[str] = Counter()
    for entry in ledger.store.entries:
        totals[entry.account_kind] += entry.amount
    assert totals["user"] == account.balance
    assert totals["holds"] == account.held
    assert totals["receivable"] == -account.debt
    resolutions = Counter(h.hold_id for h in ledger.store.holds.values() if h.status != "open")
    assert all(n == 1 for n in resolutions.values())
