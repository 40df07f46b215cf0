#!/usr/bin/env bash
# Processor memory as distinct users grow to 1,000,000, against the stack that `make up` runs
# in another terminal. Starts one `wallet processor` (it shares the partitions with the one in
# `wallet up`), sends 5 x 200,000 commands to fresh users (nearly every command a new user),
# and prints that process's resident memory after each round. The balance cache is bounded by
# WALLET_BALANCE_CACHE_MAX (default 200,000 accounts per process).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/wallet processor >/dev/null 2>&1 &
pid=$!
trap 'kill -INT $pid; wait' EXIT
sleep 15
rss() { echo "$1: processor RSS $(($(ps -o rss= -p "$pid") / 1024)) MiB"; }
rss "before"
for round in 1 2 3 4 5; do
    .venv/bin/wallet bench --commands 200000 --users 10000000 --no-ceiling | sed -n 2p
    rss "after $((round * 200000)) commands to new users"
done
