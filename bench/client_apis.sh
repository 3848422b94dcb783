#!/usr/bin/env bash
# What the client APIs cost (issue 25, item 6): all-MiniLM-L6-v2 served as an
# `embeddings` task (a sentence-transformers directory assembled from models/spam-minilm's
# files, as tests/minilm_embeddings.rs does), the same texts (../shared/bench/inputs.jsonl,
# 32 per request) sent three ways at concurrency C (32) with the shared load generator:
#
#   openai  POST /v1/embeddings {"input": [32 texts], "model": ...}        (synchronous)
#   tei     POST /embed {"inputs": [32 texts]}                             (synchronous)
#   tasks   POST /v1/tasks/{task}/batch {"inputs": [{"text"} x 32]}, then a long-poll
#           (GET /v1/tasks/{id}?wait=30) of the batch's last task
#
# in ROUNDS (3) interleaved rounds of N (32) requests each, after a warm-up of each.
# Prints texts/s (the median of the rounds), each compatible route's ratio to `tasks`,
# and the CPU line. The `tasks` path reads one result per batch where the compatible
# routes send all 32 vectors, so the ratios are, if anything, unfair to the compatible
# routes. Raw JSON lines go to $OUT (default /tmp/celeriac-bench-client-apis).
#
#   CELERIAC_BIN=$CARGO_TARGET_DIR/release/celeriac bench/client_apis.sh
#   C=32 N=32 ROUNDS=3 bench/client_apis.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
C=${C:-32}
N=${N:-32}
ROUNDS=${ROUNDS:-3}
PER=32
OUT=${OUT:-/tmp/celeriac-bench-client-apis}
TASK=minilm.embed
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl "$OUT"/*.json
build_all
"$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2

# The sentence-transformers directory: the upstream config, tokenizer and weights, with
# mean pooling and the Normalize module all-MiniLM-L6-v2 has.
ST=$OUT/all-minilm-l6-v2
mkdir -p "$ST/1_Pooling"
for f in config.json tokenizer.json model.safetensors; do cp "$ROOT/models/spam-minilm/$f" "$ST/$f"; done
cat > "$ST/modules.json" << 'EOF'
[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
 {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
 {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]
EOF
echo '{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true}' > "$ST/1_Pooling/config.json"

# The default pool (config/default.toml's defaults), with room in its queue for every
# text in flight (C x 32), waits long enough for a loaded machine, and its workers at
# the niceness of everything else (default 15), so a build beside the run does not
# starve them.
CONFIG=$OUT/client_apis.toml
cat > "$CONFIG" << EOF
[server]
max_wait_seconds = 600.0
[pools.default]
queue_capacity = $((C * PER * 2))
nice = 0
[tasks."$TASK"]
kind = "embeddings"
pool = "default"
model = "$ST"
EOF

# The three bodies of each group of 32 texts (whole groups only).
python3 - "$SHARED/bench/inputs.jsonl" "$OUT" "$TASK" "$PER" << 'PY'
import json, os, sys
src, out, task, per = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = [json.loads(l)["text"] for l in open(src) if l.strip()]
groups = [texts[i:i + per] for i in range(0, len(texts) - per + 1, per)]
with open(os.path.join(out, "openai.bodies"), "w") as f:
    for g in groups:
        f.write(json.dumps({"input": g, "model": task}) + "\n")
with open(os.path.join(out, "tei.bodies"), "w") as f:
    for g in groups:
        f.write(json.dumps({"inputs": g}) + "\n")
with open(os.path.join(out, "tasks.bodies"), "w") as f:
    for g in groups:
        f.write(json.dumps({"inputs": [{"text": t} for t in g]}) + "\n")
PY
cpu_flags >&2

# load WAY LABEL N WARMUP: one loadgen run of WAY; its JSON line goes to $OUT/runs.jsonl.
load() {
  local way=$1 label=$2 n=$3 warmup=$4
  local args=(-n "$n" -c "$C" --threads 2 --warmup "$warmup" --label "$label"
    --inputs "$OUT/$way.bodies" --status-field state --task-timeout-s 900 --http-timeout-s 700 --max-duration-s 1800)
  case $way in
    openai) args+=(--sync --submit-url "$BASE/v1/embeddings") ;;
    tei) args+=(--sync --submit-url "$BASE/embed") ;;
    tasks)
      args+=(--submit-url "$BASE/v1/tasks/$TASK/batch" --id-field "tasks.$((PER - 1)).task_id"
        --result-url "$BASE/v1/tasks/{id}" --wait-param wait=30) ;;
  esac
  "$LOADGEN" "${args[@]}" 2> "$OUT/$label.err" > "$OUT/$label.json" || true
  python3 - "$OUT/$label.json" "$way" >> "$OUT/runs.jsonl" << 'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["way"] = sys.argv[2]
print(json.dumps(d))
PY
}

start_server "$CONFIG"
trap stop_server EXIT
for way in tasks openai tei; do load "$way" "warm_$way" 8 8; done
rm -f "$OUT/runs.jsonl"
for r in $(seq 1 "$ROUNDS"); do
  for way in tasks openai tei; do
    echo "round $r: $way" >&2
    load "$way" "${way}_r$r" "$N" 0
  done
done
stop_server
trap - EXIT

python3 - "$OUT/runs.jsonl" "$PER" "$C" << 'PY'
import json, statistics, sys
per, c = int(sys.argv[2]), sys.argv[3]
runs = [json.loads(l) for l in open(sys.argv[1])]
rows = {}
for d in runs:
    thr = d["throughput_tps"]
    failed = d["failed"] + d["timed_out"] + d["not_started"]
    rows.setdefault(d["way"], []).append((thr * per, failed))
base = statistics.median(t for t, _ in rows["tasks"])
names = {"openai": "POST /v1/embeddings", "tei": "POST /embed", "tasks": "POST /v1/tasks/{task}/batch + long-poll"}
print(f"| route ({per} texts per request, C={c}) | texts/s (median) | rounds | failed | vs /v1/tasks |")
print("|---|---:|---|---:|---:|")
for way in ["openai", "tei", "tasks"]:
    vals = rows[way]
    med = statistics.median(t for t, _ in vals)
    print(f"| {names[way]} | {med:.0f} | {', '.join(f'{t:.0f}' for t, _ in vals)} | "
          f"{sum(x for _, x in vals)} | {med / base:.3f} |")
PY
cpu_flags
