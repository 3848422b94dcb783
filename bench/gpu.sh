#!/usr/bin/env bash
# Issue 15's figures on a GPU machine, in one run (allow 8 minutes): run from the
# checkout's root there, with the payload of ../shared/gpu/build.sh copied in as .gpu/
# (see ../shared/gpu/README.md):
#
#   bash bench/gpu.sh                 # writes $OUT/gpu-bench.log (default /tmp/celeriac-gpu-out)
#
# 1. fidelity of f16 and bf16 against f32 on the GPU over the bench texts
#    (`celeriac fidelity`, candle kernels);
# 2. for each precision (PRECISIONS, default "f16 bf16 f32"): a server on cuda:0 with
#    WORKERS workers, max_batch_size BATCH, max_batch_tokens TOKENS; the seconds to
#    readiness, the first request after readiness against the median of the next 20,
#    then the load generator at each concurrency in CONCS (N requests each), with
#    nvidia-smi sampled every 200 ms during the load (mean utilisation) and the mean
#    batch size, tokens per batch and device seconds per batch from /metrics;
# 3. PyTorch on the same GPU, model only (.gpu/torch-peer.py), in the same run.
#
# Also runs without a GPU, for checking the script itself: DEVICE=cpu BIN=... MODEL=...
# INPUTS=... LOADGEN=... bash bench/gpu.sh (then nvidia-smi lines are skipped).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
G=${G:-$ROOT/.gpu}
OUT=${OUT:-/tmp/celeriac-gpu-out}
W=${WORK:-/tmp/celeriac-gpu-bench}
DEVICE=${DEVICE:-cuda:0}
PRECISIONS=${PRECISIONS:-f16 bf16 f32}
WORKERS=${WORKERS:-4}
BATCH=${BATCH:-256}
TOKENS=${TOKENS:-16384}
CONCS=${CONCS:-256 1024}
N=${N:-20000}
PY=${PY:-python3}
PORT=${PORT:-18400}
mkdir -p "$OUT" "$W/model" "$W/config"
exec > >(tee "$OUT/gpu-bench.log") 2>&1
step() { echo; echo "=== $* ($(date +%T))"; }
smi() { command -v nvidia-smi > /dev/null && [ "$DEVICE" != cpu ]; }

step "machine"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
smi && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader

if [ -z "${BIN:-}" ]; then
  SITE=$($PY -c 'import site; print(site.getsitepackages()[0])')
  export LD_LIBRARY_PATH=$SITE/nvidia/cu13/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
  $PY "$G/client.py" unxz "$G/celeriac.xz" "$W/celeriac" > /dev/null
  chmod +x "$W/celeriac" "$G/loadgen"
  cp "$G"/model/config.json "$G"/model/tokenizer.json "$G"/model/head.safetensors "$G"/model/model.toml "$W/model/"
  $PY "$G/client.py" unpack-weights "$G/model/model.safetensors.pxz" "$W/model/model.safetensors" > /dev/null
  BIN=$W/celeriac MODEL=$W/model INPUTS=$G/inputs.jsonl LOADGEN=$G/loadgen CONFIG=$G/default.toml
fi
CONFIG=${CONFIG:-$ROOT/config/default.toml}

step "fidelity against f32 on $DEVICE (candle kernels)"
"$BIN" fidelity --model "$MODEL" --device "$DEVICE" --kernels candle --precisions f16,bf16 \
  --inputs "$INPUTS" --batch 64

for precision in $PRECISIONS; do
  c=$W/config/$precision.toml
  sed -e "s|^devices = \[\"cpu\"\]|devices = [\"$DEVICE\"]|" -e "s/^concurrency = 2$/concurrency = $WORKERS/" \
    -e "s/^max_batch_size = 32$/max_batch_size = $BATCH/" -e "s/^max_batch_tokens = 0$/max_batch_tokens = $TOKENS/" \
    -e "s/^queue_capacity = 1000$/queue_capacity = 100000/" -e "s/^nice = 15$/nice = 0/" \
    -e "s|^model = \"models/spam-minilm\"|model = \"$MODEL\"|" -e "s/^precision = \"auto\"$/precision = \"$precision\"\nkernels = \"candle\"/" \
    "$CONFIG" > "$c"
  step "$precision: $WORKERS workers on $DEVICE, max_batch_size $BATCH, max_batch_tokens $TOKENS"
  t0=$(date +%s.%N)
  NO_COLOR=1 RUST_LOG=info "$BIN" serve --config "$c" --listen 127.0.0.1:$PORT > "$OUT/srv-$precision.log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do curl -sf 127.0.0.1:$PORT/health/ready > /dev/null && break; sleep 0.1; done
  echo "ready after $(echo "$(date +%s.%N) - $t0" | bc) s"
  grep -o 'warmed up.*' "$OUT/srv-$precision.log" | head -n "$WORKERS"
  for i in $(seq 1 21); do
    curl -s -o /dev/null -w '%{time_total}\n' -H 'content-type: application/json' \
      -d "{\"text\": \"request $i: are we still on for dinner at $i tonight?\"}" \
      "127.0.0.1:$PORT/v1/tasks/spam.predict?wait=60"
  done | $PY -c 'import statistics,sys; t=[float(x)*1e3 for x in sys.stdin]; m=statistics.median(t[1:]); print("first request %.2f ms, median of the next 20 %.2f ms, first / median %.2f" % (t[0], m, t[0]/m))'
  for C in $CONCS; do
    smi && { nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$W/smi-$C" & }
    spid=$!
    curl -s 127.0.0.1:$PORT/metrics | grep -E '^celeriac_(batch_size|batch_tokens|batch_device_seconds)_(sum|count)' > "$W/m0"
    "$LOADGEN" --submit-url "http://127.0.0.1:$PORT/v1/tasks/spam.predict?wait=30" \
      --result-url "http://127.0.0.1:$PORT/v1/tasks/{id}" --status-field state --wait-param wait=30 \
      --inputs "$INPUTS" -n "$N" -c "$C" --warmup 256 --threads 8 --label "$precision-c$C" 2> /dev/null |
      $PY -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["label"], "msgs/s %.0f p50 %.1f ms p99 %.1f ms failed %s" % (d["throughput_tps"], d["p50_ms"], d["p99_ms"], d["failed"]))'
    smi && kill "$spid" 2> /dev/null
    curl -s 127.0.0.1:$PORT/metrics | grep -E '^celeriac_(batch_size|batch_tokens|batch_device_seconds)_(sum|count)' > "$W/m1"
    $PY - "$W/m0" "$W/m1" <<'PY'
import sys
def read(p):
    d = {}
    for l in open(p):
        k, v = l.rsplit(" ", 1)
        name, labels = k.split("{", 1) if "{" in k else (k, "")
        d[name] = d.get(name, 0.0) + float(v)
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
delta = lambda n: b.get(n, 0.0) - a.get(n, 0.0)
batches = delta("celeriac_batch_size_count")
if batches:
    print("batches %d, mean jobs per batch %.1f, mean tokens per batch %.0f, mean device ms per batch %.2f" % (
        batches, delta("celeriac_batch_size_sum") / batches,
        delta("celeriac_batch_tokens_sum") / max(delta("celeriac_batch_tokens_count"), 1),
        1e3 * delta("celeriac_batch_device_seconds_sum") / max(delta("celeriac_batch_device_seconds_count"), 1)))
PY
    if smi; then
      $PY -c 'import sys; r=[l.split(",") for l in open(sys.argv[1]) if l.strip()]; u=[float(x[0]) for x in r]; m=[float(x[1]) for x in r]; print("GPU utilisation mean %.0f%% (max %.0f%%), memory used max %.0f MiB, %d samples" % (sum(u)/len(u), max(u), max(m), len(u)))' "$W/smi-$C"
    fi
  done
  curl -s 127.0.0.1:$PORT/metrics | grep -E '^celeriac_device_memory_used_bytes' || true
  kill -TERM $pid; wait $pid 2> /dev/null
done

if [ -f "$G/torch-peer.py" ] && [ "$DEVICE" != cpu ]; then
  step "PyTorch on the same GPU, model only"
  $PY "$G/torch-peer.py"
fi
echo "GPU BENCH DONE"
