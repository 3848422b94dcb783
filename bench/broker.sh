#!/usr/bin/env bash
# celeriac through Redis against the embedded queue, side by side in one run:
#   - debug.echo at C=1 (the latency Redis adds per task) and C=64, embedded, one node on
#     Redis, and two nodes on Redis (a `serve` node taking submits and a `worker` node);
#   - spam.predict at C=32 with the 1,000 bench inputs, embedded and on Redis.
# Submit-and-wait (?wait=30) throughout. Starts its own redis-server (no persistence).
#
#   bench/broker.sh
#   N=40000 NP=1000 bench/broker.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
N=${N:-20000}
N1=${N1:-2000}
NP=${NP:-1000}
REDIS_PORT=${REDIS_PORT:-16399}
PORT2=$((PORT + 1))
INPUTS=$SHARED/bench/inputs.jsonl
LABELS=$SHARED/bench/inputs.labels
TMP=$(mktemp -d)
build_all
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
command -v redis-server > /dev/null || "$ROOT/scripts/test-deps.sh"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$TMP/redis.log" 2>&1 &
REDIS_PID=$!
WORKER_PID=
cleanup() {
  stop_server
  [ -n "$WORKER_PID" ] && kill -TERM "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null
  kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; rm -rf "$TMP"
}
trap cleanup EXIT
URL=redis://127.0.0.1:$REDIS_PORT/0

sed -e "s|^model = \"models/spam-minilm\"|model = \"$ROOT/models/spam-minilm\"|" \
  "$ROOT/config/debug.toml" > "$TMP/embedded.toml"
sed -e 's|^# url = "redis://127.0.0.1:6379/0"|url = "'"$URL"'"|' "$TMP/embedded.toml" > "$TMP/redis.toml"
grep -q "^url = \"$URL\"" "$TMP/redis.toml" || { echo "could not set [broker] url" >&2; exit 1; }

run() { # LABEL C N TASK [loadgen args]: one row
  local label=$1 c=$2 n=$3 task=$4
  shift 4
  "$LOADGEN" --submit-url "$BASE/v1/tasks/$task?wait=30" --result-url "$BASE/v1/tasks/{id}" \
    --status-field state --wait-param wait=30 -n "$n" -c "$c" --threads 1 --label "$label" "$@" 2>/dev/null |
    python3 -c 'import json,sys
d=json.load(sys.stdin)
print("| %-34s | %4d | %6d | %8.0f | %8.3f | %8.3f | %4d |" % (sys.argv[1], d["concurrency"], d["completed"], d["throughput_tps"], d["p50_ms"], d["p99_ms"], d["failures"]))' "$label"
}
suite() { # MODE: the rows of one setup
  run "$1 echo" 1 "$N1" debug.echo --body '{"x":1}' --warmup 200
  run "$1 echo" 64 "$N" debug.echo --body '{"x":1}' --warmup 500
  [ "${2:-}" = noml ] || run "$1 spam.predict" 32 "$NP" spam.predict --inputs "$INPUTS" --labels "$LABELS" --tally-field result.label --warmup 72
}

flags=$(grep -o 'avx512[a-z_0-9]*\|avx2\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "celeriac through Redis vs embedded, $(date -u +%FT%TZ), $(nproc) cores ($flags), $(redis-server --version | cut -d' ' -f3), loadgen on the same machine (1 thread)"
printf '| %-34s | %4s | %6s | %8s | %8s | %8s | %4s |\n' setup C tasks tasks/s "p50 ms" "p99 ms" fail
echo "|------------------------------------|------|--------|----------|----------|----------|------|"
start_server "$TMP/embedded.toml"
suite embedded
stop_server
start_server "$TMP/redis.toml"
suite "redis, 1 node"
RUST_LOG=warn "$CELERIAC" worker --config "$TMP/redis.toml" --listen "127.0.0.1:$PORT2" > "$TMP/worker.log" 2>&1 &
WORKER_PID=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT2/health/ready" > /dev/null && break; sleep 0.1; done
suite "redis, 2 nodes (serve + worker)"
