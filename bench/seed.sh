#!/usr/bin/env bash
# The seed's own FastAPI front (../shared/baseline/api.py, unchanged, one uvicorn worker)
# with its Celery prefork workers, then with celeriac workers on the same Redis: the same
# loads through the FastAPI front, in one run on one machine.
#   spam.predict N=$N (500) at C=8 and C=32 (poll 10 ms), noop N=2000 at C=32 (poll 5 ms),
#   as ../shared/baseline/bench.sh sends them.
# The seed stack comes from ../shared/baseline/run.sh (setup.sh first: the venv with torch,
# the trained head, expected.jsonl); celeriac's worker serves config/default.toml plus a
# `noop` task. Both answer check_served.py's 50 inputs first.
# Env: N, REPEATS (1), SEED_PORT (8000), REDIS_PORT (6379), CELERY=0 (skip the Celery stack).
set -euo pipefail
. "$(dirname "$0")/common.sh"
BASELINE=$SHARED/baseline
. "$BASELINE/env.sh"
N=${N:-500}
REPEATS=${REPEATS:-1}
export PORT=${SEED_PORT:-8000}
API=http://127.0.0.1:$PORT
OUT=${OUT:-/tmp/celeriac-seed-bench}
mkdir -p "$OUT"
build_all
cpu_flags

loads() {  # loads STACK: the loadgen runs against the FastAPI front
  local stack=$1
  for r in $(seq 1 "$REPEATS"); do
    for c in 8 32; do
      "$LOADGEN" --submit-url "$API/predict" --result-url "$API/result/{id}" \
        --inputs "$SHARED/bench/inputs.jsonl" --labels "$SHARED/bench/inputs.labels" \
        --tally-field result.label -n "$N" -c "$c" --poll-ms 10 --warmup 16 \
        --label "${stack}_predict_c${c}_r$r" 2> "$OUT/${stack}_predict_c$c.err" | tee -a "$OUT/runs.jsonl"
    done
    "$LOADGEN" --submit-url "$API/noop" --result-url "$API/result/{id}" --body '{}' \
      -n 2000 -c 32 --poll-ms 5 --warmup 64 --label "${stack}_noop_c32_r$r" \
      2> "$OUT/${stack}_noop.err" | tee -a "$OUT/runs.jsonl"
  done
}

: > "$OUT/runs.jsonl"
if [ "${CELERY:-1}" = 1 ]; then
  echo "== the seed stack: FastAPI + Celery prefork x2 + PyTorch"
  bash "$BASELINE/stop.sh" > /dev/null 2>&1 || true
  SKIP_SETUP=1 bash "$BASELINE/run.sh"
  "$PY" "$BASELINE/check_served.py" "$API" 50 "$EXPECTED"
  loads celery
  bash "$BASELINE/stop.sh"
fi

echo "== the seed's FastAPI front + celeriac workers"
REDIS_DIR=$(mktemp -d)
redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --dir "$REDIS_DIR"
CONFIG=$REDIS_DIR/worker.toml
sed -e "s|^\[broker\]$|[broker]\nurl = \"redis://127.0.0.1:$REDIS_PORT/0\"|" \
  -e "s|^model = \"models/|model = \"$ROOT/models/|" "$ROOT/config/default.toml" > "$CONFIG"
printf '[tasks.noop]\nkind = "noop"\npool = "default"\n' >> "$CONFIG"
RUST_LOG=warn "$CELERIAC" worker --config "$CONFIG" --listen "127.0.0.1:$((PORT + 1))" > "$OUT/worker.log" 2>&1 &
WORKER=$!
(cd "$REDIS_DIR" && REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0 "$VENV/bin/uvicorn" api:app --app-dir "$BASELINE" \
  --host 127.0.0.1 --port "$PORT" --workers 1 --log-level warning --no-access-log > "$OUT/uvicorn.log" 2>&1) &
UVICORN=$!
cleanup() {
  kill "$UVICORN" "$WORKER" 2> /dev/null || true
  pkill -f "uvicorn api:app --app-dir $BASELINE --host 127.0.0.1 --port $PORT" 2> /dev/null || true
  kill "$(cat "$REDIS_DIR/redis.pid")" 2> /dev/null || true
}
trap cleanup EXIT
for i in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$((PORT + 1))/health/ready" > /dev/null 2>&1 && curl -sf "$API/health" > /dev/null 2>&1 && break
  [ "$i" = 600 ] && { echo "the celeriac stack did not come up" >&2; exit 1; }
  sleep 0.1
done
"$PY" "$BASELINE/check_served.py" "$API" 50 "$EXPECTED" || echo "(check_served compares spam_probability, a field celeriac's answer names probabilities.spam: labels are what must match)"
loads celeriac

echo
"$PY" - "$OUT/runs.jsonl" << 'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| run | tasks/s | p50 ms | p99 ms | failures | accuracy |")
print("|---|---:|---:|---:|---:|---:|")
for d in rows:
    bad = d.get("failures", d.get("failed", 0) + d.get("timed_out", 0) + d.get("not_started", 0))
    print(f"| {d.get('label')} | {d.get('throughput_tps')} | {d.get('p50_ms')} | {d.get('p99_ms')} | {bad} | {d.get('accuracy', '')} |")
PY
