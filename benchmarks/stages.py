"""The write path's stages (wallet_step_stage_seconds) of one processor between two scrapes of
its /metrics: how many times each ran and its mean duration.

    stages.py URL save FILE     keep the counts and sums as they are now
    stages.py URL since FILE    print what each stage did since FILE was saved
"""

from __future__ import annotations

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

METRIC = "wallet_step_stage_seconds"


def scrape(url: str) -> dict[str, list[float]]:
    """stage -> [count, sum in seconds]."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            kind = sample.name.removeprefix(METRIC)
            if kind in ("_count", "_sum"):
                slot = found.setdefault(sample.labels["stage"], [0.0, 0.0])
                slot[kind == "_sum"] = sample.value
    return found


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[2] not in ("save", "since"):
        sys.exit(__doc__)
    url, action, path = sys.argv[1:]
    now = scrape(url)
    if action == "save":
        with open(path, "w") as f:
            json.dump(now, f)
        return
    with open(path) as f:
        before = json.load(f)
    parts = []
    for stage, (count, total_s) in now.items():
        count -= before.get(stage, [0, 0])[0]
        total_s -= before.get(stage, [0, 0])[1]
        if count:
            parts.append(f"{stage} {total_s / count * 1000:.1f} ms ({count:,.0f})")
    print("  stages, mean (times): " + ", ".join(parts))


if __name__ == "__main__":
    main()
