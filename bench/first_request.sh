#!/usr/bin/env bash
# The first request after readiness against the median request, with and without the
# workers' warm-up (`[pools.X] warm_up`), on the default config (spam.predict, packed CPU
# kernels). Each round starts a fresh server, waits for /health/ready, then sends
# REQUESTS requests one at a time (each text different) and times each from the client.
# Rounds alternate the two settings; prints one line per round and the medians.
#
#   bench/first_request.sh                 # ROUNDS=5 REQUESTS=40
#   EXTRA='kernels = "candle"' bench/first_request.sh   # another task setting
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS=${ROUNDS:-5}
REQUESTS=${REQUESTS:-40}
build_all
cpu_flags
WORK=$(mktemp -d)
trap 'stop_server; rm -rf "$WORK"' EXIT
spam_config 2 0 "$WORK/base.toml"
for warm in true false; do
  sed -e "s/^warm_up = true$/warm_up = $warm/" "$WORK/base.toml" > "$WORK/$warm.toml"
  if [ -n "${EXTRA:-}" ]; then
    sed -i "s|^precision = \"auto\"$|precision = \"auto\"\n${EXTRA}|" "$WORK/$warm.toml"
  fi
done
echo "| round | warm_up | ready after s | first request ms | median of the next $((REQUESTS - 1)) ms | first / median |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  for warm in true false; do
    t0=$(date +%s.%N)
    start_server "$WORK/$warm.toml"
    ready=$(echo "$(date +%s.%N) - $t0" | bc)
    for i in $(seq 1 "$REQUESTS"); do
      curl -s -o /dev/null -w '%{time_total}\n' -H 'content-type: application/json' \
        -d "{\"text\": \"Round $round request $i: are we still on for dinner at $i tonight?\"}" \
        "$BASE/v1/tasks/spam.predict?wait=30"
    done > "$WORK/times"
    stop_server
    python3 - "$round" "$warm" "$ready" "$WORK/times" <<'PY'
import statistics, sys
rnd, warm, ready, path = sys.argv[1:]
t = [float(x) * 1e3 for x in open(path)]
first, med = t[0], statistics.median(t[1:])
print(f"| {rnd} | {warm} | {float(ready):.2f} | {first:.2f} | {med:.2f} | {first / med:.2f} |")
PY
  done
done | tee "$WORK/table"
python3 - "$WORK/table" <<'PY'
import statistics, sys
rows = [l.split("|")[1:-1] for l in open(sys.argv[1]) if l.startswith("| ") and not l.startswith("| round")]
for warm in ("true", "false"):
    r = [x for x in rows if x[1].strip() == warm]
    if r:
        first = statistics.median(float(x[3]) for x in r)
        ratio = statistics.median(float(x[5]) for x in r)
        ready = statistics.median(float(x[2]) for x in r)
        print(f"warm_up = {warm}: median over {len(r)} rounds: ready after {ready:.2f} s, first request {first:.2f} ms, first / median {ratio:.2f}")
PY
