"""Load for the fault tests, and the audit every one of them ends with.

A workload has an exact model: opening top-ups, then small top-ups, spends and gifts to other
players (transfers, across partitions: the receiver always has a wallet, so each completes)
that can never overdraw, plus overdraft attempts that must always be refused whatever the
order. Holds come in too, in ways whose effect no order changes: short holds (they lapse,
their money comes back; a wallet's total, held money included, is what the model knows),
releases of them (accepted, or refused when a re-send put the release before its hold:
either is right), captures and reversals naming nothing that exists (always refused), and
conversions of 3 GOLD into 1 DIAMONDS (two records at one offset: the relay's pages must keep
them together; the model counts GOLD).
`Load` publishes it at a steady pace while a test does damage, re-sends what went unanswered
(as a game server does after its reply timeout, same idempotency key), and `account` then
checks every command: exactly one recorded outcome, the right one, at least one reply,
balances equal to the model, each gift credited once, and `wallet verify` clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from commands.client import WalletClient
from foundation.errors import WalletError
from foundation.settings import Settings
from messaging.kafka import key_hash, make_consumer
from schemas.commands import AMOUNT_MAX, Command, Part
from tests.integration.helpers import client_for, command, eventually, fetch
from tests.integration.processes import WalletProcess, run_wallet

CHUNK_SIZE = 50
SEND_TIMEOUT_S = 15.0
SEND_ATTEMPTS_MAX = 120
OVERDRAFT_EVERY = 25


@dataclass
class Workload:
    commands: list[Command]
    balances: dict[str, int]  # each user's GOLD total once every command is applied
    refused: set[str] = field(default_factory=set)  # command ids that must be rejected
    either: set[str] = field(default_factory=set)  # command ids whose outcome order decides


def workload(count: int, users: int, seed: int, reply_to: str) -> Workload:
    """`count` commands over `users` users; every OVERDRAFT_EVERY-th one an overdraft."""
    rng = random.Random(seed)
    names = [f"player-{seed}-{i}" for i in range(users)]
    work = Workload([command("top_up", u, 1000, reply_to=reply_to) for u in names],
                    dict.fromkeys(names, 1000))  # fmt: skip
    while len(work.commands) < count:
        user = rng.choice(names)
        if len(work.commands) % OVERDRAFT_EVERY == 0:  # more than all users ever hold
            overdraft = command("spend", user, AMOUNT_MAX, reply_to=reply_to)
            work.refused.add(str(overdraft.command_id))
            work.commands.append(overdraft)
        elif (draw := rng.random()) < 0.1:
            _holds(work, user, reply_to, draw < 0.05)
        elif draw < 0.13:  # a conversion: a purchase's two records at one offset
            work.commands.append(command(
                "purchase", user, None, costs=[Part(asset="GOLD", amount=3)],
                grants=[Part(asset="DIAMONDS", amount=1)], sku="diamond-1",
                reply_to=reply_to))  # fmt: skip
            work.balances[user] -= 3
        elif draw < 0.15:  # a gift of 1 to another player, most often on another partition
            receiver = rng.choice([n for n in names if n != user])
            work.commands.append(command("transfer", user, 1, to_user_id=receiver,
                                         reply_to=reply_to))  # fmt: skip
            work.balances[user] -= 1
            work.balances[receiver] += 1
        elif draw < 0.55:
            amount = rng.randint(1, 10)
            work.commands.append(command("top_up", user, amount, reply_to=reply_to))
            work.balances[user] += amount
        else:
            work.commands.append(command("spend", user, 1, reply_to=reply_to))
            work.balances[user] -= 1
    return work


def _holds(work: Workload, user: str, reply_to: str, released: bool) -> None:
    """A hold of 1 lapsing in 2 s, and a release of it or a capture and a reverse naming
    nothing (see the module docstring)."""
    name = f"hold-{len(work.commands)}"
    work.commands.append(command("hold", user, 1, hold_id=name, expires_in_s=2,
                                 reply_to=reply_to))  # fmt: skip
    if released:
        release = command("release", user, None, hold_id=name, reply_to=reply_to)
        work.either.add(str(release.command_id))
        work.commands.append(release)
        return
    refused = (command("capture", user, None, hold_id=f"no-{name}", reply_to=reply_to),
               command("reverse", user, None, transaction_id=uuid.uuid4(), reason="none",
                       reply_to=reply_to))  # fmt: skip
    work.refused.update(str(c.command_id) for c in refused)
    work.commands.extend(refused)


class Load:
    """Publishes a workload at `rate_per_s` in the background and keeps each first reply."""

    def __init__(
        self, client: WalletClient, work: Workload, rate_per_s: float, send_timeout_s: float
    ) -> None:
        self._client = client
        self._work = work
        self._rate_per_s = rate_per_s
        self._send_timeout_s = send_timeout_s
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.resent = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish_all(), name="fault-load")

    def answered(self) -> int:
        return sum(f.done() for f in self._futures.values())

    async def wait_answered(self, count: int, timeout_s: float) -> None:
        """Wait until `count` commands have their reply (the load is under way)."""
        async with asyncio.timeout(timeout_s):
            while True:
                if self.answered() >= count:
                    return
                await asyncio.sleep(0.05)

    async def _publish_all(self) -> None:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        commands = self._work.commands
        for start in range(0, len(commands), CHUNK_SIZE):
            chunk = commands[start : start + CHUNK_SIZE]
            await self._send(chunk)
            self.published = start + len(chunk)
            delay_s = started_s + self.published / self._rate_per_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)

    async def _send(self, chunk: list[Command]) -> None:
        """Publish until the broker takes it (it may be down or restarting meanwhile)."""
        records = [(c.user_id.encode(), c.encode(), str(c.command_id)) for c in chunk]
        for _ in range(SEND_ATTEMPTS_MAX):
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    futures = await self._client.publish_many(records)
                    await self._client.flush()
            except (KafkaError, TimeoutError, WalletError):
                await asyncio.sleep(0.5)
                continue
            for c, future in zip(chunk, futures, strict=True):
                self._futures[str(c.command_id)] = future
            return
        raise AssertionError("the broker refused the load for too long")

    async def settle(self, timeout_s: float, resend_after_s: float | None = None) -> dict[str, Any]:
        """Wait for every reply; re-send the unanswered after `resend_after_s` without progress."""
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout_s)
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        progress, progress_s = -1, loop.time()
        while unanswered := [
            c for c in self._work.commands if not self._futures[str(c.command_id)].done()
        ]:
            assert loop.time() < deadline_s, f"{len(unanswered)} commands never answered"
            if len(unanswered) != progress:
                progress, progress_s = len(unanswered), loop.time()
            elif resend_after_s is not None and loop.time() - progress_s > resend_after_s:
                for start in range(0, len(unanswered), CHUNK_SIZE):
                    await self._send(unanswered[start : start + CHUNK_SIZE])
                self.resent += len(unanswered)
                progress_s = loop.time()
            await asyncio.sleep(0.1)
        return {cid: f.result() for cid, f in self._futures.items()}


@contextlib.asynccontextmanager
async def under_load(
    settings: Settings,
    work: Workload,
    rate_per_s: float,
    procs: list[WalletProcess],
    answered_first: int = 500,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> AsyncIterator[Load]:
    """A load under way (its first replies in) for the body to damage; every process in
    `procs` (as the list stands at the end: the body may replace some) stopped afterwards."""
    try:
        async with client_for(settings) as client:
            load = Load(client, work, rate_per_s, send_timeout_s)
            load.start()
            await load.wait_answered(answered_first, timeout_s=120)
            yield load
    finally:
        for proc in procs:
            proc.stop()


@dataclass(frozen=True)
class Audit:
    commands: int
    accepted: int
    rejected: int
    replies: int
    resent: int

    def line(self, fault: str) -> str:
        return (
            f"fault audit | {fault} | {self.commands} commands | {self.accepted} accepted, "
            f"{self.rejected} rejected | {self.replies} replied | {self.resent} re-sent | "
            "wallet verify clean"
        )


async def gifts_credited(settings: Settings, work: Workload, timeout_s: float) -> None:
    """Wait until every gift of the load is credited: after a broker lost its log, a step it
    took with it is sent again by the transfer sweep (WALLET_TRANSFER_RESEND_MS), while the
    gift's re-sent command was answered `pending` at once."""
    gifts = sum(c.type == "transfer" for c in work.commands)
    sql = "SELECT count(*) AS n FROM processed_commands WHERE type = 'transfer_in'"

    async def all_in() -> bool:
        return bool((await fetch(settings, sql))[0]["n"] >= gifts)

    await eventually(all_in, timeout_s, "every gift credited")


# The processors' own commands: the expiry sweep's `expire`s (for lapsed holds) and the
# steps a transfer sends itself (its reply is the one to the transfer).
_OWN_TYPES = "('expire', 'transfer_in', 'transfer_refund')"
# A purchase's records besides its main one (the main one stands for the command).
_NOT_PART = "idempotency_key NOT LIKE 'purchase-part:%'"


async def account(settings: Settings, work: Workload, load: Load, replies: dict[str, Any]) -> Audit:
    """Every command exactly once in the ledger (or once refused), each gift credited once,
    replied, and verify clean."""
    rows = await fetch(settings, "SELECT user_id, idempotency_key, status FROM processed_commands"
                                 f" WHERE type NOT IN {_OWN_TYPES} AND {_NOT_PART}")  # fmt: skip
    outcome = {(r["user_id"], r["idempotency_key"]): r["status"] for r in rows}
    missing = [(c.type.value, replies.get(str(c.command_id))) for c in work.commands
               if (c.user_id, c.idempotency_key) not in outcome]  # fmt: skip
    assert len(rows) == len(work.commands) and not missing, (
        f"{len(rows)} records for {len(work.commands)} commands; unrecorded: {missing[:3]}"
    )
    for c in work.commands:
        want = "rejected" if str(c.command_id) in work.refused else "accepted"
        got = outcome.get((c.user_id, c.idempotency_key))
        reply = replies[str(c.command_id)]["status"]
        if str(c.command_id) in work.either:
            assert got in ("accepted", "rejected") and reply == got, (c, got, reply)
        else:
            assert got == want and reply == want, (c, got, reply)
    accepted = sum(status == "accepted" for status in outcome.values())
    entries = await fetch(settings, "SELECT count(*) AS n FROM ledger_entries e"
                          " JOIN processed_commands c USING (transaction_id) WHERE"
                          f" e.account_kind = 'user' AND c.type NOT IN {_OWN_TYPES}"
                          f" AND c.{_NOT_PART}")  # fmt: skip
    assert entries[0]["n"] == accepted, "user entries do not match accepted commands"
    credits = await fetch(settings, "SELECT transfer_id FROM processed_commands"
                          " WHERE type = 'transfer_in' AND status = 'accepted'")  # fmt: skip
    gifts = sum(c.type == "transfer" for c in work.commands)
    assert len(credits) == len({r["transfer_id"] for r in credits}) == gifts, "each gift once"
    latest = await fetch(
        settings,
        "SELECT DISTINCT ON (user_id) user_id, balance_after + coalesce(held_after, 0) AS total"
        " FROM ledger_entries WHERE account_kind = 'user' AND asset = 'GOLD'"
        " ORDER BY user_id, version DESC",
    )
    assert {r["user_id"]: r["total"] for r in latest} == work.balances
    verified = await asyncio.to_thread(run_wallet, settings, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return Audit(len(work.commands), accepted, len(work.commands) - accepted, len(replies),
                 load.resent)  # fmt: skip


async def reply_copies(settings: Settings) -> dict[str, list[bytes]]:
    """Every reply the replies topic holds, per command id, read from its start."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.replies_topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        copies: dict[str, list[bytes]] = {}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in fetched.values():
                for r in records:
                    copies.setdefault(orjson.loads(r.value)["command_id"], []).append(r.value)
        return copies
    finally:
        await consumer.stop()


async def owner_epochs(settings: Settings) -> dict[int, int]:
    """Each commands partition's owner epoch (bumped by every claim)."""
    rows = await fetch(settings, "SELECT partition, owner_epoch FROM partition_state"
                       " WHERE topic = $1", settings.commands_topic)  # fmt: skip
    return {r["partition"]: r["owner_epoch"] for r in rows}


async def assert_answered_once(
    settings: Settings, work: Workload, epochs_before: dict[int, int]
) -> int:
    """Every command answered: once on each partition no one claimed since `epochs_before`,
    at most twice on the others, the same bytes each time. Returns the number of repeats.

    Why a partition claimed during the fault may repeat some: delivery is at-least-once. The
    new owner republishes everything past the stored published watermark, and the old owner,
    cut off from the group while the broker was away, may have published some of it just
    before (its watermark, stored after each round, not yet written). A clean rebalance
    repeats nothing: a revoked partition's replies are published before it is given up."""
    copies = await reply_copies(settings)
    # (The topic holds the expiry sweep's replies too: its commands are not the load's.)
    assert {str(c.command_id) for c in work.commands} <= set(copies), "a command unanswered"
    epochs = await owner_epochs(settings)
    claimed = {p for p, epoch in epochs.items() if epoch != epochs_before.get(p)}
    repeats = 0
    for c in work.commands:
        replies = copies[str(c.command_id)]
        # A gift is answered by its receiver's partition, after its sender's sent it on.
        users = (c.user_id, c.to_user_id) if c.to_user_id else (c.user_id,)
        partitions = {key_hash(u.encode()) % settings.partitions for u in users}
        limit = 2 if partitions & claimed else 1
        assert len(replies) <= limit, (str(c.command_id), partitions, len(replies), claimed)
        assert len(set(replies)) == 1, f"{c.command_id} answered differently: {replies}"
        repeats += len(replies) - 1
    return repeats
