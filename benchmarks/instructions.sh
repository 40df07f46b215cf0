#!/usr/bin/env bash
# Instructions per command of the write path's pure part (decode, plan), counted by valgrind's
# callgrind: unlike time, a count does not move with the neighbours of a shared machine, so a
# change of a few per cent shows in one run. Each step is the difference of two runs of
# benchmarks/plan_path.py that stop after it and after the step before (imports and the
# generated commands cancel out). Needs valgrind (Debian: apt-get install valgrind).
#   benchmarks/instructions.sh [COMMANDS]     (default 4,000; about a minute per 1,000)
set -euo pipefail
cd "$(dirname "$0")/.."
commands=${1:-4000}
count() { # step -> instructions of a run that stops after it
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/plan_path.py --runs 1 --commands "$commands" --users 400 \
        --stop-after "$1" 2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
generate=$(count generate)
decode=$(count decode)
plan=$(count plan)
echo "decode $(((decode - generate) / commands)) | plan $(((plan - decode) / commands))" \
    "instructions per command ($commands commands, callgrind)"
