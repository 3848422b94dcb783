#!/usr/bin/env bash
# Two builds measured in pairs: both serve config/debug.toml at once (ports 18180 and
# 18181), and the load generator alternates between them, ROUNDS times, on debug.echo
# (submit-and-wait `?wait=5` and/or submit + long-poll GET), so drift on a shared machine
# falls on both alike. Prints each run, then per build and mode the median tasks/s and
# B's ratio to A (of the medians, and the median of the per-round ratios), and the CPU line.
#
#   A=/path/celeriac-before B=/path/celeriac-after bench/pair.sh
#   A=... B=... C=64 N=20000 ROUNDS=20 MODES=wait bench/pair.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
: "${A:?A: the first build's celeriac binary}" "${B:?B: the second build's celeriac binary}"
C=${C:-1}
N=${N:-2000}
ROUNDS=${ROUNDS:-10}
MODES=${MODES:-wait poll}
OUT=${OUT:-/tmp/celeriac-bench-pair}
mkdir -p "$OUT"
CELERIAC_BIN=${CELERIAC_BIN:-$A} build_all
cd "$ROOT"
RUST_LOG=warn "$A" serve --config config/debug.toml --listen 127.0.0.1:18180 > "$OUT/a.log" 2>&1 &
PA=$!
RUST_LOG=warn "$B" serve --config config/debug.toml --listen 127.0.0.1:18181 > "$OUT/b.log" 2>&1 &
PB=$!
trap 'kill $PA $PB 2> /dev/null' EXIT
for p in 18180 18181; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/health/ready" > /dev/null && break; sleep 0.2; done
done
cpu_flags
: > "$OUT/runs.txt"
for r in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    p=18180
    [ "$side" = B ] && p=18181
    for mode in $MODES; do
      sub="http://127.0.0.1:$p/v1/tasks/debug.echo"
      [ "$mode" = wait ] && sub="$sub?wait=5"
      "$LOADGEN" --submit-url "$sub" --result-url "http://127.0.0.1:$p/v1/tasks/{id}" \
        --status-field state --wait-param wait=5 --body '{"x":1}' -n "$N" -c "$C" \
        --warmup 200 --threads 1 --label "$side-$mode" 2> /dev/null |
        python3 -c "import json,sys; d=json.load(sys.stdin); print('$side $mode', round(d['throughput_tps']), d['p50_ms'])" |
        tee -a "$OUT/runs.txt"
    done
  done
done
python3 - "$OUT/runs.txt" << 'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, mode, tps, _ = line.split()
    rows.setdefault((mode, side), []).append(float(tps))
print("| mode | A median | B median | B/A of medians | per-round B/A (median, range) |")
print("|---|---|---|---|---|")
for mode in sorted({m for m, _ in rows}):
    a, b = rows[(mode, "A")], rows[(mode, "B")]
    r = [y / x for x, y in zip(a, b)]
    print(f"| {mode} | {statistics.median(a):.0f} | {statistics.median(b):.0f} | "
          f"{statistics.median(b) / statistics.median(a):.3f} | "
          f"{statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f}) |")
PY
