#!/usr/bin/env bash
# How long a grow from 1 to 8 spam.predict workers takes with the model loaded: the
# PUT /v1/admin/pools/default answers once the 8 workers run. Five rounds (shrinking
# back to 1 between them); prints each and the median.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
TMP=$(mktemp -d)
trap 'stop_server; rm -rf "$TMP"' EXIT
spam_config 1 0 "$TMP/grow.toml"
export CELERIAC_ADMIN_TOKEN=bench-token
start_server "$TMP/grow.toml"
put() {
  curl -s -o /dev/null -w '%{time_total}' -X PUT "$BASE/v1/admin/pools/default" \
    -H "authorization: Bearer $CELERIAC_ADMIN_TOKEN" -H 'content-type: application/json' -d "{\"concurrency\": $1}"
}
times=()
for round in 1 2 3 4 5; do
  t=$(put 8)
  times+=("$t")
  echo "round $round: grow 1 -> 8 in $(python3 -c "print(f'{float(\"$t\")*1000:.1f}')") ms" >&2
  put 1 > /dev/null
  sleep 0.2
done
python3 -c "import statistics,sys; v=sorted(float(x)*1000 for x in sys.argv[1:]); print(f'| grow 1 -> 8 spam.predict workers (PUT, model loaded) | median {statistics.median(v):.1f} ms | min {v[0]:.1f} ms | max {v[-1]:.1f} ms |')" "${times[@]}"
