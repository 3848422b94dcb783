#!/usr/bin/env bash
# The side-by-side benchmark: spam.predict over HTTP on celeriac (release build,
# config/default.toml unless CONFIG=...) at concurrency 1, 8, 32 and 128 with the 1,000
# bench inputs, the no-op path (debug.echo), and, where it can be set up, the
# FastAPI + Celery + Redis baseline (../shared/baseline/bench.sh) in the same run.
# Prints one table with ratios; raw JSON lines go to $OUT (default /tmp/celeriac-bench).
#
#   bench/spam.sh                  # everything (about 10 minutes with the baseline)
#   BASELINE=0 bench/spam.sh       # celeriac only
#   N=1000 BASELINE=0 bench/spam.sh
#   PRECISION=int8 BASELINE=0 bench/spam.sh   # spam.predict's dense layers in int8
set -euo pipefail
source "$(dirname "$0")/common.sh"
N=${N:-1000}
OUT=${OUT:-/tmp/celeriac-bench}
BASELINE=${BASELINE:-1}
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl
build_all
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
INPUTS=$SHARED/bench/inputs.jsonl
LABELS=$SHARED/bench/inputs.labels
CONFIG=${CONFIG:-$ROOT/config/debug.toml}
if [ -n "${PRECISION:-}" ]; then
  # The same config with spam.predict's precision set (relative paths stay valid: the
  # copy sits in the same directory).
  python3 - "$CONFIG" "$PRECISION" > "${CONFIG%.toml}.precision-$PRECISION.toml" << 'PY'
import re, sys
text, p = open(sys.argv[1]).read(), sys.argv[2]
head, sep, rest = text.partition('[tasks."spam.predict"]\n')
body, nxt, tail = rest.partition("\n[")
body = re.sub(r'(?m)^precision = .*\n?', '', body)
print(head + sep + f'precision = "{p}"\n' + body + nxt + tail, end="")
PY
  CONFIG=${CONFIG%.toml}.precision-$PRECISION.toml
fi
cpu_flags >&2

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
metric_sum() { # metric name, label filter: sum of matching sample values
  curl -s "$BASE/metrics" | awk -v m="$1" -v f="$2" '$1 ~ "^"m && index($1, f) {s += $2} END {print s + 0}'
}

# run LABEL C N TASK [extra loadgen args...]: one loadgen run, with server CPU, RSS and
# mean batch size over the run appended to its JSON line.
run() {
  local label=$1 c=$2 n=$3 task=$4
  shift 4
  local b0 j0 t0 w0
  b0=$(metric_sum celeriac_batch_size_count "pool=\"default\"")
  j0=$(metric_sum celeriac_batch_size_sum "pool=\"default\"")
  t0=$(cpu_ticks)
  w0=$(date +%s.%N)
  "$LOADGEN" --submit-url "$BASE/v1/tasks/$task?wait=30" --result-url "$BASE/v1/tasks/{id}" \
    --status-field state --wait-param wait=30 -n "$n" -c "$c" --threads 1 --label "$label" \
    "$@" 2> "$OUT/$label.err" > "$OUT/$label.json" || true
  local t1 w1 b1 j1
  t1=$(cpu_ticks)
  w1=$(date +%s.%N)
  b1=$(metric_sum celeriac_batch_size_count "pool=\"default\"")
  j1=$(metric_sum celeriac_batch_size_sum "pool=\"default\"")
  python3 - "$OUT/$label.json" "$t0" "$t1" "$w0" "$w1" "$clk" "$(rss_kb)" "$b0" "$b1" "$j0" "$j1" >> "$OUT/celeriac.jsonl" << 'PY'
import json, sys
f, t0, t1, w0, w1, clk, rss, b0, b1, j0, j1 = sys.argv[1:]
d = json.load(open(f))
d["server_cpu_pct"] = 100 * (float(t1) - float(t0)) / float(clk) / (float(w1) - float(w0))
d["server_rss_mib"] = int(rss) / 1024
nb = float(b1) - float(b0)
d["mean_batch"] = (float(j1) - float(j0)) / nb if nb > 0 else None
print(json.dumps(d))
PY
}

start_server "$CONFIG"
# The server has read it.
[ -z "${PRECISION:-}" ] || rm -f "$CONFIG"
trap stop_server EXIT
for c in 1 8 32 128; do
  run "predict_c$c" "$c" "$N" spam.predict --inputs "$INPUTS" --labels "$LABELS" \
    --tally-field result.label --warmup $((c * 2 + 8))
done
run echo_c64 64 20000 debug.echo --body '{"x":1}' --warmup 500
run echo_c1 1 2000 debug.echo --body '{"x":1}' --warmup 100
stop_server
trap - EXIT

if [ "$BASELINE" = 1 ] && [ -x "$SHARED/baseline/bench.sh" ]; then
  echo "running the baseline side by side: $SHARED/baseline/bench.sh (REPEATS=${REPEATS:-1})" >&2
  REPEATS=${REPEATS:-1} OUT="$OUT/baseline" "$SHARED/baseline/bench.sh" > "$OUT/baseline.log" 2>&1 ||
    echo "baseline bench.sh failed; see $OUT/baseline.log" >&2
  # bench.sh loads the baseline at C=8 only; load it at C=32 too, as celeriac, so the
  # two are compared at the same concurrency.
  echo "baseline spam.predict at C=32" >&2
  (
    unset PORT
    HERE=$SHARED/baseline
    . "$SHARED/baseline/env.sh"
    SKIP_SETUP=1 bash "$SHARED/baseline/run.sh" > "$OUT/baseline/c32-run.log" 2>&1
    "$LOADGEN" --submit-url "http://127.0.0.1:$PORT/predict" --result-url "http://127.0.0.1:$PORT/result/{id}" \
      --inputs "$INPUTS" --labels "$LABELS" --tally-field result.label \
      -n 500 -c 32 --poll-ms 10 --warmup 64 --label predict_c32 \
      2> "$OUT/baseline/predict_c32.err" > "$OUT/baseline/c32.jsonl" || true
    bash "$SHARED/baseline/stop.sh" > /dev/null 2>&1
  ) || echo "baseline C=32 run failed; see $OUT/baseline/c32-run.log" >&2
fi

python3 - "$OUT" << 'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for l in open(os.path.join(out, "celeriac.jsonl")):
    d = json.loads(l); rows[d["label"]] = d
base = {}
for f in glob.glob(os.path.join(out, "baseline", "*.jsonl")):
    for l in open(f):
        try:
            d = json.loads(l)
        except ValueError:
            continue
        if "label" in d and "throughput_tps" in d:
            base.setdefault(d["label"], []).append(d)
def b(prefix):
    runs = [d for k, v in base.items() if k.startswith(prefix) for d in v]
    if not runs: return None
    med = lambda k: statistics.median(r[k] for r in runs if r.get(k) is not None)
    return {"throughput_tps": med("throughput_tps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"), "c": runs[0]["concurrency"]}
print("| run | C | tasks/s | p50 ms | p90 ms | p99 ms | mean batch | server CPU % | server RSS MiB | accuracy | failures |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for k in ["predict_c1", "predict_c8", "predict_c32", "predict_c128", "echo_c1", "echo_c64"]:
    d = rows.get(k)
    if not d: continue
    acc = "" if d.get("accuracy") is None else f'{d["accuracy"]:.3f}'
    mb = "" if d.get("mean_batch") is None else f'{d["mean_batch"]:.1f}'
    print(f'| celeriac {k} | {d["concurrency"]} | {d["throughput_tps"]:.1f} | {d["p50_ms"]:.2f} | {d["p90_ms"]:.2f} | {d["p99_ms"]:.2f} | {mb} | {d["server_cpu_pct"]:.0f} | {d["server_rss_mib"]:.0f} | {acc} | {d["failures"]} |')
pb, nb = b("predict_r"), b("noop_r")
pc1, nc1, p32 = b("predict_c1"), b("noop_c1"), b("predict_c32")
for name, r in [("baseline predict_c1", pc1), ("baseline predict (C=8)", pb), ("baseline predict_c32", p32), ("baseline noop_c1", nc1), ("baseline noop (C=32)", nb)]:
    if r:
        print(f'| {name} | {r["c"]} | {r["throughput_tps"]:.1f} | {r["p50_ms"]:.2f} | | {r["p99_ms"]:.2f} | | | | | |')
c32 = rows.get("predict_c32")
if pb and c32:
    print()
    print(f'spam.predict: celeriac C=32 {c32["throughput_tps"]:.1f} msgs/s vs baseline C=8 {pb["throughput_tps"]:.1f} tasks/s: {c32["throughput_tps"]/pb["throughput_tps"]:.1f}x; '
          f'p99 {c32["p99_ms"]:.0f} ms vs {pb["p99_ms"]:.0f} ms: {c32["p99_ms"]/pb["p99_ms"]:.2f} of the baseline\'s')
if p32 and c32:
    print(f'spam.predict at C=32 on both: {c32["throughput_tps"]:.1f} vs {p32["throughput_tps"]:.1f} msgs/s: {c32["throughput_tps"]/p32["throughput_tps"]:.1f}x; '
          f'p99 {c32["p99_ms"]:.0f} ms vs {p32["p99_ms"]:.0f} ms: {c32["p99_ms"]/p32["p99_ms"]:.2f} of the baseline\'s')
e64 = rows.get("echo_c64")
if nb and e64:
    print(f'no-op: celeriac echo C=64 {e64["throughput_tps"]:.0f}/s vs baseline noop C=32 {nb["throughput_tps"]:.0f}/s: {e64["throughput_tps"]/nb["throughput_tps"]:.0f}x')
PY
