#!/usr/bin/env bash
# The README's read-side figures, against the stack that `make up` runs in another terminal:
# seed 500,000 commands (1,000,000 ledger entries), replay the projection from scratch 3 times,
# then load GET balance with wrk (Debian package `wrk`) 3 times on a standalone `wallet api`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python benchmarks/seed_ledger.py --commands 500000 --users 100000
for _ in 1 2 3; do .venv/bin/wallet replay --from-scratch | tail -n 1; done
port=${API_PORT:-8181}
WALLET_API_PORT=$port .venv/bin/wallet api &
api=$!
trap 'kill -INT $api' EXIT
sleep 4
for _ in 1 2 3; do
    wrk -t2 -c128 -d10s "http://127.0.0.1:$port/wallet/demo-player/balance" | grep Requests/sec
done
