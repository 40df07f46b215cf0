"""Micro-benchmark of the write path's pure part, per command: decode (schemas.codec), plan
(ledger.plan: decisions, ledger rows, replies and events encoded). No broker, no database.

    .venv/bin/python benchmarks/plan_path.py [--commands 100000] [--batch 500] [--runs 5]

Prints the median of the runs, in microseconds of CPU per command (process time: what the
neighbours of a shared machine move least), for decode, plan and both. The collector runs as
in the long-lived roles (foundation.collector). `--stop-after generate` or `decode` leaves
out the later steps: benchmarks/instructions.sh counts each step's instructions as the
difference of two such runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime

from foundation import collector
from ledger.account import AccountState, Asset
from ledger.plan import BatchContext, Intake, plan_batch
from messaging.kafka import partition_for
from processor.intake import IntakeRules, admit
from schemas.commands import Command, CommandType

PARTITIONS = 12


def _records(count: int, users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` commands for users of partition 0: top-ups and spends."""
    names = [u for u in (f"user-{i}" for i in range(users * PARTITIONS))
             if partition_for(u, PARTITIONS) == 0][:users]  # fmt: skip
    records = []
    for i in range(count):
        user = names[i % len(names)]
        kind = CommandType.TOP_UP if i % 3 else CommandType.SPEND
        command = Command(command_id=uuid.uuid4(), idempotency_key=uuid.uuid4().hex, type=kind,
                          user_id=user, asset="GOLD", amount=1 + i % 50, description="bench",
                          metadata={"sku": "pack-1"}, sent_at=datetime.now(UTC))  # fmt: skip
        records.append((user.encode(), command.encode()))
    return records


def _run(
    records: list[tuple[bytes, bytes]], batch: int, decode_only: bool = False
) -> tuple[float, float]:
    """Seconds spent decoding and planning every record, in batches of `batch`."""
    rules = IntakeRules(PARTITIONS, 64 * 1024, frozenset())
    accounts: dict[tuple[str, str], AccountState] = {}
    decode_s = plan_s = 0.0
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        began = time.process_time()
        intakes: list[Intake] = [admit(rules, 0, start + i, k, v) for i, (k, v) in enumerate(chunk)]
        decoded = time.process_time()
        decode_s += decoded - began
        if decode_only:
            continue
        ctx = BatchContext("bench.commands", 0, 0, datetime.now(UTC))
        plan = plan_batch(ctx, intakes, {}, accounts, {"GOLD": Asset()})
        accounts.update(plan.accounts)
        plan_s += time.process_time() - decoded
    return decode_s, plan_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stop-after", choices=["generate", "decode", "plan"], default="plan")
    args = parser.parse_args()
    records = _records(args.commands, args.users)
    if args.stop_after == "generate":
        return
    collector.tune_for_service()
    decode_only = args.stop_after == "decode"
    results = [_run(records, args.batch, decode_only) for _ in range(args.runs)]
    per_us = 1e6 / args.commands
    decode_us = statistics.median(d for d, _ in results) * per_us
    plan_us = statistics.median(p for _, p in results) * per_us
    print(f"decode {decode_us:.2f} us/command | plan {plan_us:.2f} us/command | "
          f"both {decode_us + plan_us:.2f} us/command (median of {args.runs} runs, "
          f"{args.commands:,} commands, batches of {args.batch})")  # fmt: skip


if __name__ == "__main__":
    main()
