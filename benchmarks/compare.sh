#!/usr/bin/env bash
# Before/after in one sitting, as the machine is shared and noisy: the paced modes of
# benchmarks/write_path.sh (and, with FULL=1, the 100,000-command mode) against a stack run from
# git ref $1 (a temporary worktree), then against this checkout, PAIRS times (default 2),
# alternating. Each side: `wallet up` plus one `wallet processor`, run in a scratch directory of
# their own (so a fresh .wallet/ each time, and this checkout's is left alone); the bench client
# is this checkout's. Stop any `make up` first: two stacks at once would share the two cores.
# With CPU=1, each run also prints the CPU seconds the stack spent on it, by process kind
# (benchmarks/cpu_seconds.py): steadier than commands/s on a shared machine. With PACED=0 (and
# FULL=1) only the 100,000-command mode is measured, after an unmeasured warm-up run.
#   benchmarks/compare.sh d816cde
#   CPU=1 FULL=1 PACED=0 PAIRS=2 benchmarks/compare.sh 5515f74
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
before=$(mktemp -d)
git worktree add -q --detach "$before" "$1"
trap 'git worktree remove --force "$before"' EXIT
side() { # label code_dir
    local label=$1 dir=$2 up proc run
    run=$(mktemp -d)
    # env -C, not a subshell: the signal below must reach the process itself.
    env -C "$run" PYTHONPATH="$dir" "$here/.venv/bin/wallet" up >/dev/null 2>&1 &
    up=$!
    sleep 50
    env -C "$run" PYTHONPATH="$dir" "$here/.venv/bin/wallet" processor >/dev/null 2>&1 &
    proc=$!
    sleep 15 # the group rebalances the partitions over the two processes
    bench() {
        local name=$1
        shift
        for _ in 1 2 3; do
            [ -z "${CPU:-}" ] || "$here/.venv/bin/python" "$here/benchmarks/cpu_seconds.py" >"$run/cpu.json"
            env -C "$run" PYTHONPATH="$here" "$here/.venv/bin/wallet" bench --json "$@"
            [ -z "${CPU:-}" ] || "$here/.venv/bin/python" "$here/benchmarks/cpu_seconds.py" --since "$run/cpu.json" >&2
        done | "$here/.venv/bin/python" "$here/benchmarks/summarize.py" "$label, $name"
    }
    if [ "${PACED:-1}" = 0 ]; then # no paced modes: one unmeasured run warms the stack up
        env -C "$run" PYTHONPATH="$here" "$here/.venv/bin/wallet" bench --commands 20000 \
            --no-ceiling >/dev/null
    else
        bench "paced 2,000/s" --commands 10000 --rate 2000 --no-ceiling
        bench "paced 5,000/s" --commands 25000 --rate 5000 --no-ceiling
    fi
    [ -z "${FULL:-}" ] || bench "100,000 over 10,000 users" --commands 100000 --users 10000 --no-ceiling
    kill -INT "$proc"
    sleep 3
    kill -INT "$up"
    wait "$proc" "$up" || true
    rm -rf "$run"
}
for pair in $(seq "${PAIRS:-2}"); do
    side "before ($1) #$pair" "$before"
    side "after (this checkout) #$pair" "$here"
done
