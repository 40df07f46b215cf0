"""Median of several `wallet bench --json` runs read from standard input (one JSON per line)."""

from __future__ import annotations

import json
import statistics
import sys


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "bench"
    runs = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    if not runs:
        sys.exit(f"{label}: no results")

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    each = ", ".join(f"{r['commands_per_s']:,.0f}" for r in runs)
    print(
        f"{label}: {len(runs)} runs, median {median('commands_per_s'):,.0f} commands/s,"
        f" p50 {median('latency_p50_ms'):,.0f} ms, p99 {median('latency_p99_ms'):,.0f} ms,"
        f" batch mean {median('batch_mean'):,.0f} (each run: {each} commands/s)"
    )
    print(
        f"  published -> planned p50 {median('to_planned_p50_ms'):,.1f} ms,"
        f" planned -> reply received p50 {median('planned_to_reply_p50_ms'):,.1f} ms"
    )
    if all(r.get("ceiling_commands_per_s") for r in runs):
        ratios = [r["commands_per_s"] / r["ceiling_commands_per_s"] for r in runs]
        print(
            f"  ceiling (raw COPY of the same rows): median {median('ceiling_commands_per_s'):,.0f}"
            f" commands/s; end-to-end / ceiling in each run:"
            f" {', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
