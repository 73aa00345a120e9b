#!/usr/bin/env bash
# Compare wspush with py-baseline and Nchan on the reference harness, in one interleaved
# run (the commands behind docs/performance.md). Needs ../shared/bench and, once, as root:
#   apt-get install redis-server nginx-light libnginx-mod-nchan libhiredis-dev gcc
set -euo pipefail
cd "$(dirname "$0")/.."
B=${WSPUSH_HARNESS:-../shared/bench}
OUT=${1:-bench-results}
mkdir -p "$OUT"
CMD="$PWD/.venv/bin/python -m wspush"
python3 "$B/run.py" build
python3 "$B/run.py" selftest
python3 "$B/run.py" matrix -t wspush-cmd,py-baseline,nchan --cmd "$CMD" --label wspush \
    -w fanout-ws,fanout-sse,latency-ws,idle-10k --reps 3 --out "$OUT/results.jsonl"
python3 "$B/run.py" matrix -t wspush-cmd,py-baseline,nchan --cmd "$CMD" --label wspush \
    -w sweep-ws,sweep-sse --reps 3 --out "$OUT/results-sweep.jsonl"
python3 "$B/run.py" summary "$OUT/results.jsonl" "$OUT/results-sweep.jsonl" | tee "$OUT/summary.md"
