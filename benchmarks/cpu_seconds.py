"""CPU seconds (user + system) used so far by the stack's processes, by kind: PostgreSQL
(its sessions, its autovacuum, its background writers), the Kafka broker (java), `wallet up`
and standalone `wallet processor`s. Throughput on this
machine is CPU-bound, and a shared machine's neighbours move commands/s far more than they
move the CPU seconds a run costs: the difference of two snapshots is the steadier figure.

    python benchmarks/cpu_seconds.py > before.json
    <the load>
    python benchmarks/cpu_seconds.py --since before.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# PostgreSQL's own processes by their titles: what is not a session's statements is the
# table's upkeep (autovacuum: dead rows of updated and deleted rows) or the write-ahead log's
# and checkpoints' background work.
_PG_UPKEEP = {"autovacuum": "postgres autovacuum", "checkpointer": "postgres background",
              "background writer": "postgres background", "walwriter": "postgres background",
              "io worker": "postgres background"}  # fmt: skip


def _kind(comm: str, cmdline: str) -> str | None:
    if "postgres" in comm:
        title = cmdline.removeprefix("postgres: ")
        upkeep = (kind for prefix, kind in _PG_UPKEEP.items() if title.startswith(prefix))
        return next(upkeep, "postgres")  # the server itself and its sessions
    if comm == "java":
        return "kafka"
    for role in ("up", "processor"):
        if f"wallet {role}" in cmdline:
            return f"wallet {role}"
    return None


def snapshot() -> Counter[str]:
    """CPU seconds of every live process of the stack, summed by kind."""
    used: Counter[str] = Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        kind = _kind(comm, cmdline)
        if kind is not None:  # utime and stime, fields 14 and 15 of proc(5)
            used[kind] += (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--since", type=Path, help="a snapshot printed before: print the change")
    args = parser.parse_args()
    now = snapshot()
    if args.since is None:
        print(json.dumps(now))
        return
    before = json.loads(args.since.read_text())
    spent = {kind: now[kind] - before.get(kind, 0.0) for kind in sorted(now)}
    parts = ", ".join(f"{kind} {s:.1f}" for kind, s in spent.items())
    print(f"  cpu s: total {sum(spent.values()):.1f} ({parts})")


if __name__ == "__main__":
    main()
