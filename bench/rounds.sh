#!/usr/bin/env bash
# f32, the model alone, against ONNX Runtime f32, in alternated rounds: each round runs
# the peers harness (ORT's plain and fused graphs only), then celeriac's packed f32 on 1
# thread straight after, then, with OLD_BIN set, another build's bench_model (e.g. an
# earlier commit's). The machine's speed swings within minutes; a round puts the figures
# it compares a minute apart. Prints one line per round with the issue's two ratios:
# our batch-1 p50 over ORT's best, our batched throughput over ORT's best batched figure
# (the higher of its sorted batch 32 and its one-at-a-time rate).
#
#   bench/rounds.sh                                  # 4 rounds
#   ROUNDS=3 OLD_BIN=/tmp/bench_model.old bench/rounds.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-4}
N=${N:-300}
OUT=${OUT:-/tmp/celeriac-rounds}
mkdir -p "$OUT"
BENCH_MODEL=$CARGO_TARGET_DIR/release/examples/bench_model
(cd "$ROOT" && cargo build --release --example bench_model) >&2
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
INPUTS=$SHARED/bench/inputs.jsonl
cpu_flags
ours() {
  (cd "$ROOT" && "$1" --kernels packed --precision f32 --threads 1 --n "$N" --inputs "$INPUTS") |
    tail -n 1
}
for i in $(seq 1 "$ROUNDS"); do
  at=$(date -u +%H:%M)
  (cd "$ROOT" && "$SHARED/bench/peers/run.sh" --no-quant --out "$OUT/peers-$i") > "$OUT/peers-$i.log" 2>&1
  ours "$BENCH_MODEL" > "$OUT/ours-$i.json"
  if [ -n "${OLD_BIN:-}" ]; then ours "$OLD_BIN" > "$OUT/old-$i.json"; else : > "$OUT/old-$i.json"; fi
  python3 - "$OUT" "$i" "$at" << 'PY'
import json, sys
out, i, at = sys.argv[1:]
ort = json.load(open(f"{out}/peers-{i}/results.json"))["models"]
ours = json.load(open(f"{out}/ours-{i}.json"))
old_text = open(f"{out}/old-{i}.json").read().strip()
b1 = min(m["b1_model_ms"]["p50"] for m in ort.values())
best = max(max(m["b32_msgs_per_s"]["1t_sorted"], m["b32_msgs_per_s"]["b1_1t"]) for m in ort.values())
batched = max(ours["b8_model_msgs_per_s"], ours["b32_model_msgs_per_s"])
line = (f"{at} ORT f32: batch-1 p50 {b1:.2f} ms, best batched {best:.0f} msgs/s | "
        f"ours: {ours['b1_model_p50_ms']:.2f} ms, batch 8 / 32 {ours['b8_model_msgs_per_s']:.0f} / "
        f"{ours['b32_model_msgs_per_s']:.0f} | batch 1 {ours['b1_model_p50_ms'] / b1:.2f}x ORT's latency "
        f"(bar <= 1), batched {batched / best:.2f}x ORT's best (bar >= 1.2)")
if old_text:
    old = json.loads(old_text)
    line += f" | OLD_BIN batch 32 {old['b32_model_msgs_per_s']:.0f} ({old['b32_model_msgs_per_s'] / best:.2f}x)"
print(line, flush=True)
PY
done
