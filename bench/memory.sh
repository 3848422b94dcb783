#!/usr/bin/env bash
# Resident memory of the server serving spam.predict with 1 worker and with 8 workers
# (intra_op_threads = 1 each), after every worker has run predictions. The weights are
# loaded once per device and shared, so the 8-worker server should cost activations,
# not 7 more model copies (Celery prefork pays a full copy per child).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
TMP=$(mktemp -d)
trap 'stop_server; rm -rf "$TMP"' EXIT
declare -A RSS
for workers in 1 8; do
  spam_config "$workers" 1 "$TMP/w$workers.toml"
  start_server "$TMP/w$workers.toml"
  "$LOADGEN" --submit-url "$BASE/v1/tasks/spam.predict" --result-url "$BASE/v1/tasks/{id}" \
    --status-field state --wait-param wait=10 --inputs "$SHARED/bench/inputs.jsonl" \
    -n $((workers * 40)) -c "$workers" > /dev/null 2>&1
  RSS[$workers]=$(rss_kb)
  echo "workers=$workers: VmRSS $((RSS[$workers] / 1024)) MiB, VmHWM $(( $(hwm_kb) / 1024 )) MiB" >&2
  stop_server
done
python3 -c "import sys; a,b=int(sys.argv[1]),int(sys.argv[2]); print(f'| spam.predict server RSS | 1 worker {a/1024:.0f} MiB | 8 workers {b/1024:.0f} MiB | ratio {b/a:.2f}x |')" "${RSS[1]}" "${RSS[8]}"
