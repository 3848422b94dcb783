#!/usr/bin/env bash
# The no-op path: debug.echo over HTTP, measured with ../shared/bench/loadgen.
# Prints one row per run: throughput and end-to-end latency percentiles.
#
#   bench/echo.sh                 # C=1 and C=64, submit+long-poll and submit-and-wait
#   N=100000 bench/echo.sh        # more tasks per C=64 run
set -euo pipefail
source "$(dirname "$0")/common.sh"
N=${N:-40000}
N1=${N1:-3000}

build_all
start_server "${CONFIG:-$ROOT/config/debug.toml}"
trap stop_server EXIT

printf '%s\n' "celeriac debug.echo over HTTP, $(date -u +%FT%TZ), $(nproc) cores, load generator on the same machine (1 thread)"
printf '| %-28s | %5s | %8s | %9s | %9s | %9s | %8s |\n' mode C tasks tasks/s "p50 ms" "p99 ms" failures
printf '|%s|\n' "------------------------------|-------|----------|-----------|-----------|-----------|----------"
for mode in longpoll submit_wait; do
  for c in 1 64; do
    n=$([ "$c" = 1 ] && echo "$N1" || echo "$N")
    case $mode in
      longpoll) sub="$BASE/v1/tasks/debug.echo"; label="submit + long-poll GET" ;;
      submit_wait) sub="$BASE/v1/tasks/debug.echo?wait=5"; label="submit-and-wait (?wait=5)" ;;
    esac
    "$LOADGEN" --submit-url "$sub" --result-url "$BASE/v1/tasks/{id}" --status-field state \
      --wait-param wait=5 --body '{"x":1}' -n "$n" -c "$c" --warmup 500 --threads 1 \
      --label "echo_${mode}_c$c" 2>/dev/null |
      python3 -c 'import json,sys
d=json.load(sys.stdin); l=sys.argv[1]
print("| %-28s | %5d | %8d | %9.0f | %9.3f | %9.3f | %8d |" % (l, d["concurrency"], d["completed"], d["throughput_tps"], d["p50_ms"], d["p99_ms"], d["failures"]))' "$label"
  done
done
echo "server resident memory after the runs: $(( $(rss_kb) / 1024 )) MiB (peak $(( $(hwm_kb) / 1024 )) MiB; finished records are kept for results.ttl_seconds)"
