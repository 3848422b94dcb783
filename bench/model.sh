#!/usr/bin/env bash
# The model alone, side by side in one run: celeriac's packed CPU kernels in each
# precision (PRECISIONS, default f32 bf16 int8; ISAS adds runs with CELERIAC_ISA capped,
# e.g. ISAS="avx512 avx2"), its candle kernels, and PyTorch (the baseline's
# SpamClassifier, where the baseline venv exists), each on THREADS intra-op threads
# (default 1): batch-1 latency and batch 8/32 throughput over the first N bench inputs;
# then one row per architecture (ARCHS), ours and PyTorch's on the same checkpoint.
# Prints the CPU flags and one table; JSON lines go to $OUT.
#
#   bench/model.sh              # 1 thread
#   THREADS=2 N=300 bench/model.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
THREADS=${THREADS:-1}
N=${N:-300}
OUT=${OUT:-/tmp/celeriac-bench-model}
mkdir -p "$OUT"
: > "$OUT/model.jsonl"
# BENCH_MODEL_BIN=path measures another build's example (e.g. before an upgrade).
BENCH_MODEL=${BENCH_MODEL_BIN:-$CARGO_TARGET_DIR/release/examples/bench_model}
[ -n "${BENCH_MODEL_BIN:-}" ] || (cd "$ROOT" && cargo build --release --example bench_model) >&2
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
INPUTS=$SHARED/bench/inputs.jsonl
cpu_flags >&2
PRECISIONS=${PRECISIONS:-f32 bf16 int8}
for isa in "" ${ISAS:-}; do
  for p in $PRECISIONS; do
    (cd "$ROOT" && CELERIAC_ISA=$isa "$BENCH_MODEL" --kernels packed --precision "$p" \
      --threads "$THREADS" --n "$N" --inputs "$INPUTS") | tail -n 1 >> "$OUT/model.jsonl"
  done
done
(cd "$ROOT" && "$BENCH_MODEL" --kernels candle \
  --threads "$THREADS" --n "$N" --inputs "$INPUTS") | tail -n 1 >> "$OUT/model.jsonl"

PY=${PY:-$HOME/.cache/celeriac-baseline/venv/bin/python}
if [ -x "$PY" ]; then
  (cd "$ROOT" && "$PY" bench/torch_model.py --threads "$THREADS" --n "$N" --inputs "$INPUTS" \
    --baseline "$SHARED/baseline") 2> "$OUT/torch.err" | tail -n 1 >> "$OUT/model.jsonl"
else
  echo "no PyTorch venv at $PY (run ../shared/baseline/setup.sh): celeriac only" >&2
fi
# One row per architecture (ARCHS; empty to skip): random sequence classifiers at
# MiniLM's shape with MiniLM's tokenizer (scripts/make-tiny-models.py --bench), served as
# text_classifier checkpoints: the BERT family on the packed kernels (f32; the spam row
# above is MiniLM itself at the same shape), DeBERTa-v2 and ModernBERT on
# candle-transformers, each architecture also in PyTorch where the venv is there.
# ARCH_PY: a Python with torch and transformers (default: the baseline's venv).
ARCHS=${ARCHS-bert roberta xlm-roberta distilbert deberta-v2 modernbert}
ARCH_PY=${ARCH_PY:-$PY}
if [ -n "$ARCHS" ] && [ -x "$ARCH_PY" ]; then
  CKPTS=${CKPTS:-$OUT/checkpoints}
  [ -d "$CKPTS/modernbert" ] || (cd "$ROOT" && "$ARCH_PY" scripts/make-tiny-models.py --bench "$CKPTS") >&2
  (cd "$ROOT" && cargo build --release --example bench_checkpoint) >&2
  for arch in $ARCHS; do
    (cd "$ROOT" && "$CARGO_TARGET_DIR/release/examples/bench_checkpoint" --model "$CKPTS/$arch" \
      --name "$arch" --precision f32 --threads "$THREADS" --n "$N" --inputs "$INPUTS") \
      | tail -n 1 >> "$OUT/model.jsonl"
    (cd "$ROOT" && "$ARCH_PY" bench/torch_checkpoint.py --model "$CKPTS/$arch" --name "$arch" \
      --threads "$THREADS" --n "$N" --inputs "$INPUTS") 2>> "$OUT/torch.err" \
      | tail -n 1 >> "$OUT/model.jsonl"
  done
elif [ -n "$ARCHS" ]; then
  echo "no PyTorch venv at $ARCH_PY: no per-architecture rows (they need transformers to make the checkpoints)" >&2
fi
python3 - "$OUT/model.jsonl" << 'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("Texts in, probabilities out; in brackets, the model alone (texts tokenized beforehand,")
print("as ../shared/bench/peers measures ONNX Runtime and OpenVINO; one at a time from the mean).")
print("| implementation | kernel | threads | load s | batch 1 p50 / p99 ms | batch 1 msgs/s | batch 8 msgs/s | batch 32 msgs/s |")
print("|---|---|---|---|---|---|---|---|")
def alone(r, key):
    v = r.get(key)
    return "" if v is None else f" ({v:.2f})" if key.endswith("_ms") else f" ({v:.1f})"
for r in rows:
    def b(n):
        v = r.get(f"b{n}_msgs_per_s")
        g = r.get(f"b{n}_grouped_msgs_per_s")
        return "" if v is None else (f"{v:.1f}" + (f" (grouped {g:.1f})" if g else "") + alone(r, f"b{n}_model_msgs_per_s"))
    print(f'| {r["impl"]} | {r.get("kernel", "")} | {r["threads"]} | {r["load_s"]:.2f} | {r["b1_p50_ms"]:.1f}{alone(r, "b1_model_p50_ms")} / {r["b1_p99_ms"]:.1f} | '
          f'{r["b1_msgs_per_s"]:.1f}{alone(r, "b1_model_msgs_per_s")} | {b(8)} | {b(32)} |')
PY
