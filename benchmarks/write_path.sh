#!/usr/bin/env bash
# The README's write-path figures: `wallet bench` N times per mode (default 3) against the
# stack that `make up` runs in another terminal, then the median of each figure.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
for _ in $(seq "$runs"); do
    .venv/bin/wallet bench --commands 100000 --users 10000 --json
done | .venv/bin/python benchmarks/summarize.py "100,000 commands over 10,000 users"
for _ in $(seq "$runs"); do
    .venv/bin/wallet bench --commands 100000 --hot --json
done | .venv/bin/python benchmarks/summarize.py "100,000 commands over 1 user"
