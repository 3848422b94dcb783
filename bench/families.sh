#!/usr/bin/env bash
# The packed kernels' families against MiniLM at the same shape, in rounds: each round
# runs MiniLM (the spam model, examples/bench_model, packed f32) and each architecture's
# MiniLM-shaped random classifier (scripts/make-tiny-models.py --bench, MiniLM's own
# tokenizer; examples/bench_checkpoint, packed f32), in an order that rotates per round,
# so drift on a shared machine falls on all alike. Prints the CPU flags, the median
# msgs/s at batch 1, 8 and 32 per row, and each family's ratio to MiniLM (the bar:
# within 10 %).
#
#   bench/families.sh                       # 7 rounds, first 100 bench inputs, 1 thread
#   ROUNDS=9 N=200 CKPTS=/path bench/families.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-7}
N=${N:-100}
THREADS=${THREADS:-1}
ARCHS=${ARCHS:-bert roberta xlm-roberta distilbert}
OUT=${OUT:-/tmp/celeriac-bench-families}
CKPTS=${CKPTS:-/tmp/celeriac-bench-model/checkpoints}
EX=$CARGO_TARGET_DIR/release/examples
INPUTS=$SHARED/bench/inputs.jsonl
mkdir -p "$OUT"
: > "$OUT/families.jsonl"
[ -x "$EX/bench_model" ] && [ -x "$EX/bench_checkpoint" ] ||
  (cd "$ROOT" && cargo test --release --no-run) >&2
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
if [ ! -d "$CKPTS/distilbert" ]; then
  PY=${ARCH_PY:-$HOME/.cache/celeriac-baseline/venv/bin/python}
  (cd "$ROOT" && "$PY" scripts/make-tiny-models.py --bench "$CKPTS") >&2
fi
cpu_flags
rows=(minilm $ARCHS)
for r in $(seq 1 "$ROUNDS"); do
  n=${#rows[@]}
  for i in $(seq 0 $((n - 1))); do
    row=${rows[$(((i + r) % n))]}
    if [ "$row" = minilm ]; then
      line=$(cd "$ROOT" && "$EX/bench_model" --kernels packed --precision f32 \
        --threads "$THREADS" --n "$N" --inputs "$INPUTS" | tail -n 1)
    else
      line=$(cd "$ROOT" && "$EX/bench_checkpoint" --model "$CKPTS/$row" --name "$row" \
        --precision f32 --threads "$THREADS" --n "$N" --inputs "$INPUTS" | tail -n 1)
    fi
    echo "{\"row\": \"$row\", \"round\": $r, \"run\": $line}" >> "$OUT/families.jsonl"
  done
done
python3 - "$OUT/families.jsonl" "$ROUNDS" << 'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = {}
for x in runs:
    rows.setdefault(x["row"], []).append(x["run"])
med = {k: {b: statistics.median(r[f"b{b}_msgs_per_s"] for r in v) for b in (1, 8, 32)} for k, v in rows.items()}
print(f"packed f32, median msgs/s of {sys.argv[2]} rounds (each round: every row once, order rotated)")
print("| row | batch 1 | batch 8 | batch 32 | vs MiniLM (1 / 8 / 32) |")
print("|---|---|---|---|---|")
m = med["minilm"]
for k, v in med.items():
    ratio = "—" if k == "minilm" else " / ".join(f"{v[b] / m[b]:.2f}" for b in (1, 8, 32))
    print(f"| {k} | {v[1]:.1f} | {v[8]:.1f} | {v[32]:.1f} | {ratio} |")
PY
