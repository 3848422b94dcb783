#!/usr/bin/env bash
# What one bad input costs: bench/poison.py's two scenarios (a burst of 40 panicking
# tasks; 2,000 sleeps with 60 panicking tasks among them) against config/debug.toml,
# each on a fresh server. CELERIAC_BIN=path/to/binary (and CONFIG=its debug.toml) measures
# another build side by side.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
echo "bench/poison.sh, $(date -u +%FT%TZ), binary $CELERIAC, $(nproc) cores, CPU flags: $(grep -o 'avx512[a-z_0-9]*\|avx2\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
trap stop_server EXIT
for scenario in burst mixed; do
  start_server "${CONFIG:-$ROOT/config/debug.toml}"
  python3 "$ROOT/bench/poison.py" "$BASE" "$scenario"
  stop_server
done
