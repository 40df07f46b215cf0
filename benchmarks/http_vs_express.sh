#!/usr/bin/env bash
# The HTTP figures side by side, in one sitting: this service's API and the Express wallet it
# replaces (github.com/Chakradhar-Malage/internal-wallet-service: clone it yourself; nothing of
# it is part of this repository), alternating runs, against the stack `make up` runs in another
# terminal. Each side gets the same load: 128 connections, 1,000 funded users, GET balance,
# then POST spend of 1 with a fresh idempotency key per request. This service runs
# API_PROCESSES (default 2) `wallet api` processes on one port; the Express wallet its one
# Node process, on a database of its own on the stack's PostgreSQL, with its knex pool raised
# from 10 to 200 (at 10 its writes starve) and UUID idempotency keys (its column is a uuid).
#   benchmarks/http_vs_express.sh ../internal-wallet-service
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=$(realpath "$1")
set -a && source .wallet/stack.env && set +a
auth="Authorization: Bearer ${WALLET_API_KEY:-$(cat .wallet/dev-api-key)}"
port=${API_PORT:-8181}
express_port=${EXPRESS_PORT:-3111}
scratch=$(mktemp -d)
pids=()
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait; rm -rf "$scratch"' EXIT

tar -C "$source_dir" --exclude=.git --exclude=node_modules -cf - . | tar -C "$scratch" -xf -
sed -i 's/pool: { min: 0, max: 10 }/pool: { min: 0, max: 200 }/' "$scratch/knexfile.js"
grep -q "max: 200" "$scratch/knexfile.js" || { echo "knexfile.js: pool not found" >&2; exit 1; }
eval "$(.venv/bin/python benchmarks/express_db.py create)"
(cd "$scratch" && npm install --omit=dev --no-audit --no-fund --silent &&
    node node_modules/knex/bin/cli.js migrate:latest >/dev/null &&
    node node_modules/knex/bin/cli.js seed:run >/dev/null)
.venv/bin/python benchmarks/express_db.py fund 1000
(cd "$scratch" && PORT=$express_port exec node src/index.js >/dev/null 2>&1) &
pids+=($!)
for _ in $(seq "${API_PROCESSES:-2}"); do
    WALLET_API_PORT=$port WALLET_API_REUSE_PORT=true .venv/bin/wallet api >/dev/null 2>&1 &
    pids+=($!)
done
sleep 8
ours=http://127.0.0.1:$port
theirs=http://127.0.0.1:$express_port
load() { # url kind amount api [wrk option...]: one 10 s run, its figures on one line
    local url=$1 kind=$2 amount=$3 api=$4
    shift 4
    wrk -t2 -c128 -d10s "$@" -s benchmarks/http_load.lua "$url" -- "$kind" 1000 "$amount" "$api" |
        grep -E "Requests/sec|statuses|latency:" | paste -sd' '
}
echo "funding this service's users: $(load "$ours" topup 1000000000 wallet -H "$auth")"
for kind in balance spend; do
    for run in 1 2 3; do
        echo "$kind #$run this service: $(load "$ours" "$kind" 1 wallet -H "$auth")"
        echo "$kind #$run Express wallet: $(load "$theirs" "$kind" 1 express)"
    done
done
