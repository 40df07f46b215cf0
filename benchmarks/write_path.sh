#!/usr/bin/env bash
# The README's write-path figures, against the stack that `make up` runs in another terminal.
# PROCESSORS (default 2) is the number of processor processes: the one inside `wallet up` plus
# PROCESSORS-1 `wallet processor` processes started here (one per core is the fastest on the
# 2-core machine). Each mode runs RUNS times (default 3); the median of each figure is printed,
# and the mean of each write-path stage in the first `wallet processor` (its /metrics on
# METRICS_PORT, default 9464) over the mode's runs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
extra=$((${PROCESSORS:-2} - 1))
metrics=http://127.0.0.1:${METRICS_PORT:-9464}/metrics
pids=()
for i in $(seq "$extra"); do
    port=0
    [ "$i" -ne 1 ] || port=${METRICS_PORT:-9464}
    WALLET_METRICS_PORT=$port .venv/bin/wallet processor >/dev/null 2>&1 &
    pids+=($!)
done
trap '[ ${#pids[@]} -eq 0 ] || kill -INT "${pids[@]}"; wait' EXIT
[ "$extra" -eq 0 ] || sleep 15 # the group rebalances the partitions over the processes
bench() {
    local label=$1 stages
    shift
    stages=$(mktemp)
    [ "$extra" -eq 0 ] || .venv/bin/python benchmarks/stages.py "$metrics" save "$stages"
    for _ in $(seq "$runs"); do .venv/bin/wallet bench --json "$@"; done |
        .venv/bin/python benchmarks/summarize.py "$label"
    [ "$extra" -eq 0 ] || .venv/bin/python benchmarks/stages.py "$metrics" since "$stages"
    rm -f "$stages"
}
# Paced runs first: the embedded broker's in-memory logs slow its fetches as they grow (see the
# README), so latency is measured while they are small.
bench "paced 2,000 commands/s" --commands 10000 --rate 2000 --no-ceiling
bench "paced 5,000 commands/s" --commands 25000 --rate 5000 --no-ceiling
# Projector lag from `wallet up`'s /ready, every 0.5 s while the first mode runs.
lag_log=$(mktemp)
(while sleep 0.5; do curl -s "http://127.0.0.1:${API_PORT:-8080}/ready" | .venv/bin/python -c \
    'import json,sys; print(json.load(sys.stdin)["projectorLagSeconds"])' >>"$lag_log" || true; done) &
sampler=$!
bench "100,000 commands over 10,000 users" --commands 100000 --users 10000
kill "$sampler"
echo "projector lag during it: $(wc -l <"$lag_log") samples, max $(sort -g "$lag_log" | tail -n 1) s," \
    "last $(tail -n 1 "$lag_log") s"
rm -f "$lag_log"
bench "100,000 commands over 1 user" --commands 100000 --hot
