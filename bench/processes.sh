#!/usr/bin/env bash
# Pool kind `processes` against `threads`, side by side in one run:
# - spam.predict throughput at C=32 (the model pool: 2 workers, 1 intra-op thread each);
# - the process hop on debug.echo: latency at C=1 (one task per hop) and throughput at
#   C=64 (batches of up to 64 per hop), debug pool of 4 workers;
# - resident memory (RSS) and proportional set size (PSS, from /proc/PID/smaps_rollup;
#   RSS counts shared pages once per process) summed over the server and its children,
#   with 1 and 8 spam.predict workers after each worker served;
# - grow 1 -> 8 spam.predict workers (PUT /v1/admin/pools/default, answered once the
#   8 run), 3 rounds.
#
# The throughput runs alternate threads and processes for ROUNDS rounds (the machine is
# shared and noisy); the table shows each kind's median. Raw JSON lines stay in $OUT.
#
#   bench/processes.sh                 # N=2000 predictions per C=32 run, 3 rounds
#   N=600 ROUNDS=1 bench/processes.sh  # quick look
set -euo pipefail
source "$(dirname "$0")/common.sh"
N=${N:-2000}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/celeriac-bench-processes}
build_all
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
rm -rf "$OUT"
mkdir -p "$OUT"
TMP=$OUT
trap 'stop_server' EXIT
INPUTS=$SHARED/bench/inputs.jsonl
export CELERIAC_ADMIN_TOKEN=bench-token

# config KIND WORKERS DEBUG_WORKERS: spam.predict on WORKERS workers, and debug.echo on
# DEBUG_WORKERS (none when 0), every pool of kind KIND.
config() {
  cat << TOML
[pools.default]
kind = "$1"
concurrency = $2
intra_op_threads = 1
[tasks."spam.predict"]
kind = "text_classifier"
pool = "default"
model = "$ROOT/models/spam-minilm"
TOML
  [ "$3" = 0 ] || cat << TOML
[pools.debug]
kind = "$1"
concurrency = $3
intra_op_threads = 1
queue_capacity = 100000
max_batch_size = 64
max_batch_delay_ms = 0.0
[tasks."debug.echo"]
kind = "debug.echo"
pool = "debug"
TOML
}

# The server and its children.
pids() { echo "$SERVER_PID"; pgrep -P "$SERVER_PID" || true; }
# sum_kb FIELD: FIELD (Rss, Pss) from smaps_rollup, summed over pids(), in KiB.
sum_kb() { for p in $(pids); do awk -v f="$1:" '$1 == f {print $2}' "/proc/$p/smaps_rollup"; done | awk '{s += $1} END {print s + 0}'; }

# load LABEL TASK C N [loadgen args...]: one loadgen run; its JSON line goes to $TMP/LABEL.json.
load() {
  local label=$1 task=$2 c=$3 n=$4
  shift 4
  "$LOADGEN" --submit-url "$BASE/v1/tasks/$task?wait=30" --result-url "$BASE/v1/tasks/{id}" \
    --status-field state --wait-param wait=30 -n "$n" -c "$c" --threads 1 --label "$label" \
    "$@" 2> "$TMP/$label.err" > "$TMP/$label.json" || true
}

put() {
  curl -s -o /dev/null -w '%{time_total}' -X PUT "$BASE/v1/admin/pools/default" \
    -H "authorization: Bearer $CELERIAC_ADMIN_TOKEN" -H 'content-type: application/json' -d "{\"concurrency\": $1}"
}

echo "bench/processes.sh, $(date -u +%FT%TZ), $(git -C "$ROOT" rev-parse --short HEAD), $(cpu_flags)" >&2
for round in $(seq 1 "$ROUNDS"); do
  for kind in threads processes; do
    config "$kind" 2 4 > "$TMP/$kind.toml"
    start_server "$TMP/$kind.toml"
    load "${kind}_predict_c32_r$round" spam.predict 32 "$N" --inputs "$INPUTS" --warmup 72
    load "${kind}_echo_c1_r$round" debug.echo 1 5000 --body '{"x":1}' --warmup 200
    load "${kind}_echo_c64_r$round" debug.echo 64 40000 --body '{"x":1}' --warmup 1000
    stop_server
    echo "round $round $kind: $(cat "$TMP/${kind}_predict_c32_r$round.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("spam C=32 %.1f/s" % d["throughput_tps"])')" >&2
  done
done
for kind in threads processes; do
  for w in 1 8; do
    config "$kind" "$w" 0 > "$TMP/$kind-mem.toml"
    start_server "$TMP/$kind-mem.toml"
    load "${kind}_mem$w" spam.predict "$w" $((w * 40)) --inputs "$INPUTS"
    child_kb=$(for p in $(pgrep -P "$SERVER_PID"); do awk '$1 == "Rss:" {print $2}' "/proc/$p/smaps_rollup"; done | sort -n | tail -1)
    echo "{\"label\": \"${kind}_mem$w\", \"processes\": $(pids | wc -l), \"rss_kb\": $(sum_kb Rss), \"pss_kb\": $(sum_kb Pss), \"largest_child_rss_kb\": ${child_kb:-0}}" > "$TMP/${kind}_mem$w.mem"
    if [ "$w" = 1 ]; then
      for round in 1 2 3; do
        t=$(put 8)
        echo "$t" >> "$TMP/${kind}_grow.txt"
        echo "$kind: grow 1 -> 8 in ${t}s" >&2
        put 1 > /dev/null
        sleep 0.5
      done
    fi
    stop_server
  done
done

python3 - "$TMP" << 'PY'
import glob, json, os, statistics, sys
d = sys.argv[1]
def run(label):
    """The median run (by throughput) of every round of `label`."""
    runs = []
    for f in glob.glob(os.path.join(d, label + "_r*.json")):
        try:
            runs.append(json.load(open(f)))
        except ValueError:
            pass
    if not runs:
        return None
    runs.sort(key=lambda r: r["throughput_tps"])
    return runs[len(runs) // 2]
def mem(label):
    return json.load(open(os.path.join(d, label + ".mem")))
def grow(kind):
    v = sorted(float(x) * 1000 for x in open(os.path.join(d, kind + "_grow.txt")))
    return f"{statistics.median(v):.0f} ms (min {v[0]:.0f}, max {v[-1]:.0f})"
print(f"medians of {len(glob.glob(os.path.join(d, 'threads_predict_c32_r*.json')))} alternated rounds for the throughput rows")
print("| measure | threads | processes |")
print("|---|---|---|")
def row(name, f):
    print(f"| {name} | {f('threads')} | {f('processes')} |")
def tput(label):
    return lambda k: (lambda r: f'{r["throughput_tps"]:.1f}/s, p50 {r["p50_ms"]:.3f} ms, p99 {r["p99_ms"]:.2f} ms, {r["failures"]} failed, {r["http_errors"]} HTTP errors' if r else "run failed")(run(f"{k}_{label}"))
row("spam.predict C=32 (2 workers)", tput("predict_c32"))
row("debug.echo C=1 (4 workers)", tput("echo_c1"))
row("debug.echo C=64 (4 workers)", tput("echo_c64"))
for w in (1, 8):
    row(f"RSS, server + children, {w} spam worker(s)", lambda k: f'{mem(f"{k}_mem{w}")["rss_kb"] / 1024:.0f} MiB ({mem(f"{k}_mem{w}")["processes"]} processes)')
    row(f"PSS, server + children, {w} spam worker(s)", lambda k: f'{mem(f"{k}_mem{w}")["pss_kb"] / 1024:.0f} MiB')
row("RSS 8 workers / 1 worker", lambda k: f'{mem(f"{k}_mem8")["rss_kb"] / mem(f"{k}_mem1")["rss_kb"]:.2f}x')
row("largest child's RSS, 8 workers", lambda k: f'{mem(f"{k}_mem8")["largest_child_rss_kb"] / 1024:.0f} MiB' if mem(f"{k}_mem8")["largest_child_rss_kb"] else "no children")
row("RSS, server + 8 children / one child (issue 14 goal: <= 1.5x)", lambda k: f'{mem(f"{k}_mem8")["rss_kb"] / mem(f"{k}_mem8")["largest_child_rss_kb"]:.2f}x' if mem(f"{k}_mem8")["largest_child_rss_kb"] else "-")
row("grow 1 -> 8 spam workers, median of 3", grow)
c1 = {k: run(f"{k}_echo_c1") for k in ("threads", "processes")}
if all(c1.values()):
    print(f'\nprocess hop on debug.echo at C=1: p50 {c1["processes"]["p50_ms"] - c1["threads"]["p50_ms"]:+.3f} ms per task (medians)')
PY
