#!/usr/bin/env bash
# Two builds side by side in one run: each bench script named runs against build A and
# build B, ROUNDS times, the order alternating (A B, then B A, ...), so that drift on a
# shared machine falls on both alike. Prints, per row of the scripts' tables, the median
# tasks/s of each build and B/A.
#
#   A=/old/target/release/celeriac B=$CARGO_TARGET_DIR/release/celeriac bench/ab.sh spam echo broker
#   ROUNDS=3 A=... B=... bench/ab.sh echo
#
# spam.sh runs with BASELINE=0 (the Python baseline is not what is compared here).
# Raw tables go to $OUT (default /tmp/celeriac-ab).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
: "${A:?A=path of build A's celeriac}" "${B:?B=path of build B's celeriac}"
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-/tmp/celeriac-ab}
[ $# -gt 0 ] || set -- spam echo broker
rm -rf "$OUT"
mkdir -p "$OUT"
cpu_flags | tee "$OUT/cpu.txt"
echo "A = $A"
echo "B = $B"
for r in $(seq 1 "$ROUNDS"); do
  order="A B"
  [ $((r % 2)) = 0 ] && order="B A"
  for script in "$@"; do
    for side in $order; do
      bin=$A
      [ "$side" = B ] && bin=$B
      echo "round $r: $script on $side" >&2
      CELERIAC_BIN=$bin BASELINE=0 OUT="$OUT/$script-$side-$r" "$HERE/$script.sh" \
        > "$OUT/$script-$side-$r.txt" 2> "$OUT/$script-$side-$r.err" ||
        { echo "$script on $side failed; see $OUT/$script-$side-$r.err" >&2; exit 1; }
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$@" << 'PY'
import glob, os, re, statistics, sys
out, rounds, scripts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def rows(path):
    """{row label: tasks/s} from the markdown tables of one script's output."""
    got, col = {}, None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            col = None if not line.startswith("|") else col
            continue
        if "tasks/s" in cells:
            col = cells.index("tasks/s")
            continue
        if col is None or set(cells[0]) <= set("-: "):
            continue
        try:
            got[f"{cells[0]} (C={cells[1]})"] = float(cells[col])
        except ValueError:
            pass
    return got

print(f"| script | row | A tasks/s | B tasks/s | B/A | runs per side |")
print("|---|---|---|---|---|---|")
for s in scripts:
    per = {"A": {}, "B": {}}
    for side in "AB":
        for r in range(1, rounds + 1):
            for k, v in rows(os.path.join(out, f"{s}-{side}-{r}.txt")).items():
                per[side].setdefault(k, []).append(v)
    for k in per["A"]:
        a, b = per["A"][k], per["B"].get(k, [])
        if not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {s} | {k} | {ma:.1f} | {mb:.1f} | {mb / ma:.3f} | {len(a)} |")
PY
