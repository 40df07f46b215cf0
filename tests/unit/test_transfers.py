"""Transfers between users on two partitions, driven the way the processor and its outbox
relay drive them (in memory: each step is planned and committed by its partition, and the
commands a step sends are fed back as the relay would publish them)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ledger.account import BALANCE_MAX, Accepted, AccountState, Asset, References, Target
from ledger.lots import Piece, SpendOrder
from ledger.plan import BatchPlan, ProcessedRow, transaction_id_for
from ledger.reversals import legacy_lot_id
from ledger.transfers import receive
from schemas.codec import decode_command
from schemas.commands import Command
from storage.event_store import OutboxMessage
from storage.memory_event_store import MemoryEventStore
from tests.contract.batches import planned_commands
from tests.integration.helpers import command

TOPIC = "unit.commands"
# Who lives where: the sender and the receiver on different partitions, as most pairs are.
PARTITION_OF = {"ana": 0, "bob": 1, "cy": 1, "nobody": 1}


class Bank:
    """Two partitions of one ledger in memory, and the relay between them."""

    def __init__(self) -> None:
        self.store = MemoryEventStore(("GOLD",))
        self.offsets = {0: 0, 1: 0}
        self.epochs = {p: asyncio.run(self.store.claim_partition(TOPIC, p, "unit")).epoch
                       for p in self.offsets}  # fmt: skip
        self.sent: list[OutboxMessage] = []  # everything the relay published, in order

    def run(self, *commands: Command) -> list[ProcessedRow]:
        """Each partition's share of `commands` as one batch; the records they made."""
        rows: list[ProcessedRow] = []
        for partition in self.offsets:
            mine = [c for c in commands if PARTITION_OF[c.user_id] == partition]
            if mine:
                rows += asyncio.run(self._batch(partition, mine)).processed_rows
        return rows

    def relay(self) -> list[ProcessedRow]:
        """Publish what the last batches sent on to the commands topic, and process it
        (until no step sends another); the records the steps made."""
        rows: list[ProcessedRow] = []
        while steps := self._steps():
            rows += self.run(*steps)
        return rows

    def replies(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.reply_value) for m in self.sent
                if m.reply_value and m.reply_topic == "wallet.replies"]  # fmt: skip

    def system(self, kind: str) -> int:
        return sum(e.amount for e in self.store.entries if e.account_kind == kind)

    def total(self, user: str) -> int:
        return sum(e.amount for e in self.store.entries if e.user_id == user)

    def lots(self, user: str) -> dict[uuid.UUID, tuple[bool, int]]:
        return {i: (lot.paid, lot.remaining)
                for i, lot in self.store.lots.get((user, "GOLD"), {}).items()}  # fmt: skip

    def _steps(self) -> list[Command]:
        steps = [m for m in self.sent if m.reply_topic == TOPIC]
        self.sent = [m for m in self.sent if m.reply_topic != TOPIC]
        decoded = [decode_command(m.reply_value, bytes_max=10_000) for m in steps]
        for m, c in zip(steps, decoded, strict=True):
            assert isinstance(c, Command) and m.reply_key == c.user_id.encode(), (m, c)
        return [c for c in decoded if isinstance(c, Command)]

    async def _batch(self, partition: int, commands: list[Command]) -> BatchPlan:
        first = self.offsets[partition]
        epoch = self.epochs[partition]
        position, plan = await planned_commands(self.store, TOPIC, partition, epoch, first,
                                                commands)  # fmt: skip
        await self.store.commit_batch(position, plan)
        rebuilt = await self.store.unpublished(TOPIC, partition, (0, first), len(commands))
        assert rebuilt == [OutboxMessage.of(r) for r in plan.outbox_rows], "rebuilt alike"
        self.sent += rebuilt
        self.offsets[partition] = position.next_offset
        return plan


def transfer(sender: str, receiver: str, amount: int, key: str = "gift") -> Command:
    return command("transfer", sender, amount, key=key, to_user_id=receiver)


def funded(**credits: int) -> Bank:
    """A bank whose users were topped up (a negative amount: a bonus of its size)."""
    bank = Bank()
    bank.run(*(command("top_up" if n > 0 else "bonus", user, abs(n), key=f"fund-{user}")
               for user, n in credits.items()))  # fmt: skip
    bank.sent.clear()  # their replies: not what the tests look at
    return bank


def conserved(bank: Bank) -> None:
    """Every transaction balances, and what is in flight is in `transfers`."""
    assert sum(e.amount for e in bank.store.entries) == 0


class TestCompleted:
    def test_the_amount_moves_from_sender_to_receiver(self) -> None:
        """A transfer across partitions debits the sender, credits the receiver, and leaves
        nothing in `transfers`."""
        bank = funded(ana=100, bob=5)
        [debit] = bank.run(transfer("ana", "bob", 30))
        assert debit.status == "accepted" and debit.transfer_id == debit.transaction_id
        assert bank.total("ana") == 70 and bank.system("transfers") == 30
        [credit] = bank.relay()
        assert (credit.type, credit.status, credit.user_id) == ("transfer_in", "accepted", "bob")
        assert credit.transfer_id == debit.transaction_id and credit.counterparty == "ana"
        assert bank.total("bob") == 35 and bank.system("transfers") == 0
        conserved(bank)

    def test_the_sender_is_answered_completed(self) -> None:
        """The transfer's one reply comes from the receiver's credit, to the transfer's reply
        topic, with its command id and the transfer."""
        bank = funded(ana=100, bob=5)
        sent = transfer("ana", "bob", 30)
        bank.run(sent)
        assert bank.replies() == []  # the debit answers nothing yet
        bank.relay()
        [reply] = bank.replies()
        assert reply["command_id"] == str(sent.command_id) and reply["status"] == "accepted"
        assert reply["user_id"] == "ana" and reply["type"] == "transfer"
        tid = str(transaction_id_for("ana", "gift"))
        assert reply["transfer"] == {"id": tid, "from_user_id": "ana", "to_user_id": "bob",
                                     "status": "completed"}  # fmt: skip

    def test_paid_stays_paid(self) -> None:
        """The receiver gets the very lots the sender's spend order took: a free one stays
        free, a paid one paid."""
        bank = funded(ana=-20, bob=1)
        bank.run(command("top_up", "ana", 50, key="more"))
        bank.run(transfer("ana", "bob", 40))  # free first: the bonus's 20, then 20 paid
        bank.relay()
        bonus, top_up = transaction_id_for("ana", "fund-ana"), transaction_id_for("ana", "more")
        assert bank.lots("bob")[bonus] == (False, 20) and bank.lots("bob")[top_up] == (True, 20)
        assert bank.lots("ana") == {top_up: (True, 30)}
        conserved(bank)

    def test_a_step_published_twice_takes_effect_once(self) -> None:
        """The outbox may publish a step again (a crash between publish and mark): the copy is
        a duplicate and answers nothing."""
        bank = funded(ana=100, bob=5)
        bank.run(transfer("ana", "bob", 30))
        step = bank._steps()
        bank.run(*step)
        rows = bank.run(*step)
        assert rows == [] and bank.total("bob") == 35
        assert len(bank.replies()) == 1


class TestRefused:
    def test_a_receiver_without_a_wallet_gives_it_back(self) -> None:
        """An unknown receiver refuses; the refund puts the sender's pieces back in their lots
        and the sender is answered refused, with the receiver's reason."""
        bank = funded(ana=100)
        sent = transfer("ana", "nobody", 30)
        bank.run(sent)
        credit, refund = bank.relay()
        assert (credit.status, credit.error_code) == ("rejected", "unknown_wallet")
        assert (refund.type, refund.status, refund.user_id) == (
            "transfer_refund",
            "accepted",
            "ana",
        )
        assert bank.total("ana") == 100 and bank.system("transfers") == 0
        assert bank.lots("ana") == {transaction_id_for("ana", "fund-ana"): (True, 100)}
        [reply] = bank.replies()
        assert reply["command_id"] == str(sent.command_id) and reply["status"] == "rejected"
        assert reply["error"]["code"] == "unknown_wallet" and reply["balance"] == 100
        assert reply["transfer"]["status"] == "refused"
        conserved(bank)

    def test_a_balance_limit_refuses(self) -> None:
        """The receiver's asset balance limit applies to a transfer as to any credit."""
        bank = funded(ana=100, bob=5)
        bank.store.assets["GOLD"] = Asset(balance_max=20)
        bank.run(transfer("ana", "bob", 30))
        credit, refund = bank.relay()
        assert credit.error_code == "balance_limit_exceeded" and refund.status == "accepted"
        assert bank.total("ana") == 100 and bank.total("bob") == 5

    def test_a_sender_without_enough_is_refused_at_once(self) -> None:
        """The debit is decided like a spend: refused, nothing is sent on."""
        bank = funded(ana=10, bob=5)
        [row] = bank.run(transfer("ana", "bob", 30))
        assert row.error_code == "insufficient_funds" and row.transfer_id is None
        assert bank.relay() == [] and bank.replies()[0]["status"] == "rejected"


class TestForgedSteps:
    def test_a_step_naming_no_transfer_is_dead_lettered(self) -> None:
        """A transfer_in whose transfer does not exist is not recorded (it would take the real
        step's key): it becomes a dead letter."""
        bank = funded(ana=100, bob=5)
        tid = transaction_id_for("ana", "gift")
        forged = command("transfer_in", "bob", 30, key=f"transfer-in:{tid}", transaction_id=tid)
        assert bank.run(forged) == []
        assert [m.dlq_value is not None for m in bank.sent[-1:]] == [True]
        bank.run(transfer("ana", "bob", 30))  # the real one, later, still completes
        [credit] = bank.relay()
        assert credit.status == "accepted" and bank.total("bob") == 35

    def test_a_step_with_another_amount_is_dead_lettered(self) -> None:
        """The amounts come from the transfer's record: a step that disagrees is not one."""
        bank = funded(ana=100, bob=5)
        [debit] = bank.run(transfer("ana", "bob", 30))
        tid = debit.transaction_id
        forged = command("transfer_in", "bob", 99, key=f"transfer-in:{tid}", transaction_id=tid)
        assert bank.run(forged) == []
        [credit] = bank.relay()
        assert credit.amount == 30 and bank.total("bob") == 35

    def test_a_refund_of_a_completed_transfer_is_dead_lettered(self) -> None:
        """A refund needs the receiver's refusal on record: money cannot come back twice."""
        bank = funded(ana=100, bob=5)
        [debit] = bank.run(transfer("ana", "bob", 30))
        bank.relay()
        tid = debit.transaction_id
        forged = command("transfer_refund", "ana", None, key=f"transfer-refund:{tid}",
                         transaction_id=tid)  # fmt: skip
        assert bank.run(forged) == []
        assert bank.total("ana") == 70 and bank.total("bob") == 35

    def test_a_step_in_an_unknown_asset_is_dead_lettered(self) -> None:
        """A step is checked against its transfer before anything else: one naming an asset
        that does not exist is a dead letter too, not a recorded refusal."""
        bank = funded(ana=100)
        tid = uuid.uuid4()
        forged = command("transfer_refund", "ana", None, asset="RUBY",
                         key=f"transfer-refund:{tid}", transaction_id=tid)  # fmt: skip
        assert bank.run(forged) == []
        assert b"unknown_transfer" in (bank.sent[-1].dlq_value or b"")

    def test_a_forged_step_beside_its_debit_in_one_batch_is_dead_lettered(self) -> None:
        """A batch that notes its own transactions (it holds a reverse) and a forged refund
        of a transfer debited earlier in it: the refund is dead-lettered, nothing crashes."""
        bank = funded(ana=100, bob=5)
        tid = transaction_id_for("ana", "gift")
        undo = command("reverse", "ana", None, transaction_id=uuid.uuid4(), reason="none")
        forged = command("transfer_refund", "ana", None, key=f"transfer-refund:{tid}",
                         transaction_id=tid)  # fmt: skip
        rows = bank.run(undo, transfer("ana", "bob", 30), forged)
        assert [r.type for r in rows] == ["reverse", "transfer"]
        assert b"unknown_transfer" in (bank.sent[-1].dlq_value or b"")
        bank.relay()
        assert bank.total("ana") == 70 and bank.total("bob") == 35


class TestRetries:
    def test_a_key_reused_for_another_receiver_is_refused(self) -> None:
        """A retry names the same receiver; the same key to someone else is another command:
        idempotency_key_reused, never a duplicate that would say it went to them."""
        bank = funded(ana=100, bob=5, cy=5)
        bank.run(transfer("ana", "bob", 30))
        bank.relay()
        [reply] = bank.replies()
        bank.sent.clear()
        bank.run(transfer("ana", "cy", 30))
        [again] = bank.replies()
        assert reply["transfer"]["to_user_id"] == "bob"
        assert again["error"]["code"] == "idempotency_key_reused"


class TestLegacyLots:
    def test_a_legacy_piece_goes_to_the_receivers_own_legacy_lot(self) -> None:
        """A lot from before lots existed is paid or free as its id says for its holder: a
        receiver gets such a piece in its own legacy lot of the same kind."""
        tid = uuid.uuid4()
        sender_lot = legacy_lot_id(True, "ana", "GOLD")
        pieces = (Piece(sender_lot, True, 20, 0, None, 0),)
        debit = Target("ana", "GOLD", "transfer", 20, 20, pieces, False, counterparty="bob")
        refs = References({}, {tid: debit}, {}, frozenset({"bob"}))
        step = command("transfer_in", "bob", 20, key=f"transfer-in:{tid}", transaction_id=tid)
        account = AccountState(0, 1, order=SpendOrder.FREE_FIRST)
        given = receive(step, account, refs, BALANCE_MAX)
        assert isinstance(given, Accepted)
        assert [(lot.lot_id, lot.paid) for lot in given.account.lots] == [
            (legacy_lot_id(True, "bob", "GOLD"), True)]  # fmt: skip
        assert given.account.paid == 20


class TestCommandFields:
    def test_a_transfer_names_another_user(self) -> None:
        """to_user_id is required for a transfer, refused elsewhere, and never the sender."""
        with pytest.raises(ValidationError, match="to_user_id is required"):
            command("transfer", "ana", 5)
        with pytest.raises(ValidationError, match="another user"):
            command("transfer", "ana", 5, to_user_id="ana")
        with pytest.raises(ValidationError, match="to_user_id is required"):
            command("spend", "ana", 5, to_user_id="bob")

    def test_step_keys_are_reserved(self) -> None:
        """A step's key is its prefix and the transfer's id; no other command may use one."""
        tid = uuid.uuid4()
        with pytest.raises(ValidationError, match="idempotency key is"):
            command("transfer_in", "bob", 5, key="mine", transaction_id=tid)
        with pytest.raises(ValidationError, match="transfer steps"):
            command("spend", "bob", 5, key=f"transfer-in:{tid}")


# A random life of three players on two partitions: credits, spends and gifts (to each other
# and to a user without a wallet), the relay holding some steps back, re-ordering them and
# publishing some twice.
_PLAYERS = ("ana", "bob", "cy")
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["top_up", "bonus", "spend", "transfer", "transfer", "relay"]),
        st.integers(0, 2),  # who
        st.sampled_from([*_PLAYERS, "nobody"]),  # a gift's receiver
        st.integers(1, 30),
        st.booleans(),  # the relay: publish twice
    ),
    max_size=40,
)


class TestAnyOrder:
    @settings(max_examples=120, deadline=None)
    @given(actions=_ACTIONS, seed=st.integers(0, 1000))
    def test_every_gift_ends_once_and_nothing_is_made_or_lost(
        self, actions: list[tuple[str, int, str, int, bool]], seed: int
    ) -> None:
        """Whatever the commands and however late, out of order or twice the steps arrive:
        each accepted gift ends exactly once (completed to a wallet, refunded from a user
        without one), `transfers` ends empty, credits less spends is what the wallets hold,
        and every wallet's lots make up its balance and paid part."""
        rng = random.Random(seed)
        bank = funded(ana=50, bob=50, cy=-50)
        held: list[Command] = []
        for i, (kind, who, receiver, amount, twice) in enumerate(actions):
            sender = _PLAYERS[who]
            if kind == "relay":
                held += bank._steps()
                rng.shuffle(held)
                out, held = held[: len(held) // 2], held[len(held) // 2 :]
                bank.run(*(out + out[:1] if twice else out))
            elif kind == "transfer" and receiver != sender:
                bank.run(transfer(sender, receiver, amount, key=f"t{i}"))
            elif kind != "transfer":
                bank.run(command(kind, sender, amount, key=f"c{i}"))
        bank.run(*held)
        bank.relay()
        _each_gift_ended_once(bank)
        credited = sum(e.amount for e in bank.store.entries
                       if e.account_kind in ("treasury", "bonus_pool"))  # fmt: skip
        spent = sum(e.amount for e in bank.store.entries
                    if e.account_kind in ("revenue", "free_spent"))  # fmt: skip
        assert bank.system("transfers") == 0
        assert sum(bank.total(u) for u in _PLAYERS) == -credited - spent
        asyncio.run(bank.store.load_accounts([(u, "GOLD") for u in _PLAYERS]))  # checked


def _each_gift_ended_once(bank: Bank) -> None:
    rows = list(bank.store._processed.values())
    debits = {r.transfer_id: r for r in rows if r.type == "transfer" and r.status == "accepted"}
    steps = Counter((r.transfer_id, r.type, r.status) for r in rows if r.type != "transfer")
    for tid, debit in debits.items():
        credited = steps[(tid, "transfer_in", "accepted")]
        refused = steps[(tid, "transfer_in", "rejected")]
        refunded = steps[(tid, "transfer_refund", "accepted")]
        assert (credited, refused, refunded) in ((1, 0, 0), (0, 1, 1)), (debit, steps)
        assert (refunded == 1) == (debit.counterparty == "nobody"), debit
