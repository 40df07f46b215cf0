#!/usr/bin/env bash
# The README's HTTP figures, against the stack that `make up` runs in another terminal:
# POST /wallet/spend over 1,000 users and GET /wallet/{userId}/balance, 128 connections, 3 runs
# each, served by API_PROCESSES (default 2) `wallet api` processes sharing one port
# (WALLET_API_REUSE_PORT). The users are funded first with top-ups. Needs wrk (Debian: wrk).
# The API key: WALLET_API_KEY, else the development key `wallet up` wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
auth="Authorization: Bearer ${WALLET_API_KEY:-$(cat .wallet/dev-api-key)}"
port=${API_PORT:-8181}
pids=()
for _ in $(seq "${API_PROCESSES:-2}"); do
    WALLET_API_PORT=$port WALLET_API_REUSE_PORT=true .venv/bin/wallet api &
    pids+=($!)
done
trap 'kill -INT "${pids[@]}"; wait' EXIT
sleep 6
url=http://127.0.0.1:$port
write() { wrk -t2 -c128 -d"$1" -H "$auth" -s benchmarks/http_load.lua "$url" -- "${@:2}"; }
write 5s topup 1000 1000000000 | grep -E "statuses"
for _ in 1 2 3; do
    write 10s spend 1000 1 | grep -E "Requests/sec|statuses|latency:"
done
for _ in 1 2 3; do
    wrk -t2 -c128 -d10s -H "$auth" --latency "$url/wallet/http-1/balance" | grep -E "Requests/sec|  50%|  99%"
done
