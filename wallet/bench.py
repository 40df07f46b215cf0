"""`wallet bench`: publish N commands over M users, wait for every reply, report rates.

Commands are built and encoded before the clock starts, so the figure is the service's, not
the generator's. Latency is reply received minus command published, per command. Batch sizes
are read from the replies: one batch's commands share one `processed_at`.

With `transfers`, the N commands are gifts between users on different partitions (every user
topped up first, before the clock starts): a transfer's one reply comes when the receiver's
partition has credited it, so its latency is the whole saga's (the debit's batch, the relay,
the commands topic again, the credit's batch, the reply), and the batches counted are the
credits'.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from commands.client import WalletClient
from foundation.settings import Settings
from messaging.kafka import partition_for
from schemas.commands import Command, CommandType
from wallet.ceiling import copy_ceiling

_MIX = [CommandType.TOP_UP] * 5 + [CommandType.BONUS] + [CommandType.SPEND] * 4
# Commands go out in record batches of at most this many; paced runs send what is due each tick.
PUBLISH_CHUNK_MAX = 1_000
PACE_TICK_S = 0.001


@dataclass(frozen=True)
class BenchResult:
    commands: int
    users: int
    seconds: float
    commands_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    # The reply latency split at the command's processed_at (when its batch was planned):
    # published -> planned (broker, fetch, waiting for a step, lookups), and planned -> reply
    # received (commit, relay, reply topic, client). Medians, wall clocks of this machine.
    to_planned_p50_ms: float
    planned_to_reply_p50_ms: float
    outcomes: dict[str, int]
    batch_mean: float
    batch_max: int
    ceiling_commands_per_s: float | None = None  # raw COPY of the same rows (wallet.ceiling)
    kind: str = "commands"  # or "transfers" (each one a debit, a credit and a reply)

    def lines(self) -> list[str]:
        return [
            f"{self.kind}: {self.commands} over {self.users} users in {self.seconds:.2f} s",
            f"throughput: {self.commands_per_s:,.0f} {self.kind}/s (all replies received)",
            f"reply latency: p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms",
            f"  published -> planned p50 {self.to_planned_p50_ms:.1f} ms, planned -> reply"
            f" received p50 {self.planned_to_reply_p50_ms:.1f} ms",
            f"batch size (commands per transaction): mean {self.batch_mean:.0f},"
            f" max {self.batch_max}",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            *self._ceiling_lines(),
        ]

    def _ceiling_lines(self) -> list[str]:
        if self.ceiling_commands_per_s is None:
            return []
        ratio = self.commands_per_s / self.ceiling_commands_per_s
        return [
            f"ceiling: raw COPY of the same rows, same PostgreSQL, one connection:"
            f" {self.ceiling_commands_per_s:,.0f} commands/s",
            f"end-to-end / ceiling: {ratio:.2f}",
        ]


def build_commands(count: int, users: int, asset: str, seed: int, reply_to: str) -> list[Command]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    return [
        Command(
            command_id=uuid.uuid4(),
            idempotency_key=f"bench-{run}-{i}",
            type=rng.choice(_MIX),
            user_id=f"bench-{run}-{rng.randrange(users)}",
            asset=asset,
            amount=rng.randint(1, 100),
            sent_at=now,
            reply_to=reply_to,
        )
        for i in range(count)
    ]


def build_transfers(
    count: int, users: int, asset: str, seed: int, reply_to: str, partitions: int
) -> tuple[list[Command], list[Command]]:
    """Top-ups for `users` users (enough for every gift), then `count` gifts between two of
    them on different partitions (any two, with one partition)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    names = [f"bench-{run}-{i}" for i in range(max(users, 2))]
    apart: dict[int, list[str]] = {}  # the users of each partition
    for n in names:
        apart.setdefault(partition_for(n, partitions), []).append(n)

    def one(i: int, type: CommandType, user: str, amount: int, **more: Any) -> Command:
        return Command(command_id=uuid.uuid4(), idempotency_key=f"bench-{run}-{type}-{i}",
                       type=type, user_id=user, asset=asset, amount=amount, sent_at=now,
                       reply_to=reply_to, **more)  # fmt: skip

    funds = [one(i, CommandType.TOP_UP, n, 100 * count) for i, n in enumerate(names)]
    gifts = []
    for i in range(count):
        sender = rng.choice(names)
        here = partition_for(sender, partitions)
        there = [p for p in apart if p != here]
        choices = apart[rng.choice(there)] if there else [n for n in names if n != sender]
        receiver = rng.choice(choices)
        gifts.append(one(i, CommandType.TRANSFER, sender, rng.randint(1, 100),
                         to_user_id=receiver))  # fmt: skip
    return funds, gifts


async def run_bench(
    settings: Settings,
    count: int,
    users: int,
    rate_per_s: float | None = None,
    asset: str = "GOLD",
    timeout_s: float = 600.0,
    ceiling: bool = True,
    transfers: bool = False,
) -> BenchResult:
    # Replies come to the topic the settings name (WALLET_REPLIES_TOPIC), where the bench's
    # client listens: a command left with the default reply_to hung the bench until its
    # timeout whenever that setting was changed (found by tests/integration/test_bench.py).
    seed, reply_to = count * 31 + users, settings.replies_topic
    funds: list[Command] = []
    if transfers:
        funds, commands = build_transfers(count, users, asset, seed, reply_to,
                                          settings.partitions)  # fmt: skip
    else:
        commands = build_commands(count, users, asset, seed, reply_to)
    encoded = [(c.user_id.encode(), c.encode(), str(c.command_id)) for c in commands]
    received: list[float] = [0.0] * count
    sent: list[float] = [0.0] * count
    sent_wall: list[float] = [0.0] * count  # time.time(), to compare with processed_at
    replies: list[dict[str, Any]] = []
    async with WalletClient(settings) as client:
        if funds:  # before the clock starts
            ready = await client.publish_many([(c.user_id.encode(), c.encode(),
                                                str(c.command_id)) for c in funds])  # fmt: skip
            await client.flush()
            await asyncio.wait_for(asyncio.gather(*ready), timeout_s)
        start = time.perf_counter()
        futures: list[asyncio.Future[dict[str, Any]]] = []
        while len(futures) < count:
            due = count if not rate_per_s else int((time.perf_counter() - start) * rate_per_s) + 1
            due = min(due, count, len(futures) + PUBLISH_CHUNK_MAX)
            if due <= len(futures):
                await asyncio.sleep(PACE_TICK_S)
                continue
            chunk = await client.publish_many(encoded[len(futures) : due])
            now, now_wall = time.perf_counter(), time.time()
            for i, future in enumerate(chunk, start=len(futures)):
                sent[i], sent_wall[i] = now, now_wall
                future.add_done_callback(_stamp(received, i))
            futures.extend(chunk)
        await client.flush()
        replies = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    elapsed = max(received) - start
    latencies = sorted((r - s) * 1000 for r, s in zip(received, sent, strict=True))
    planned = [datetime.fromisoformat(r["processed_at"]).timestamp() for r in replies]
    received_wall = [w + (r - s) for w, r, s in zip(sent_wall, received, sent, strict=True)]
    batches = Counter(r["processed_at"] for r in replies)
    ceiling_per_s = None
    if ceiling and not transfers:  # (the ceiling plans one partition's rows: no saga)
        ceiling_per_s = (await copy_ceiling(settings, commands)).commands_per_s
    return BenchResult(
        commands=count,
        users=users,
        seconds=elapsed,
        commands_per_s=count / elapsed,
        latency_p50_ms=statistics.median(latencies),
        latency_p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        to_planned_p50_ms=statistics.median(
            (p - w) * 1000 for p, w in zip(planned, sent_wall, strict=True)
        ),
        planned_to_reply_p50_ms=statistics.median(
            (r - p) * 1000 for r, p in zip(received_wall, planned, strict=True)
        ),
        outcomes=dict(Counter(_outcome(r) for r in replies)),
        batch_mean=statistics.fmean(batches.values()),
        batch_max=max(batches.values()),
        ceiling_commands_per_s=ceiling_per_s,
        kind="transfers" if transfers else "commands",
    )


def _stamp(received: list[float], index: int) -> Any:
    def done(_: asyncio.Future[Any]) -> None:
        received[index] = time.perf_counter()

    return done


def _outcome(reply: dict[str, Any]) -> str:
    if reply.get("transfer") is not None:
        return str(reply["transfer"]["status"])
    if reply["status"] == "accepted":
        return "accepted"
    return f"rejected:{reply['error']['code']}"
