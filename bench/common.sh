# Shared by the bench scripts: build celeriac and the load generator, start and stop a
# server, run one loadgen measurement. Source it; it changes nothing by itself.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/celeriac-target}
# CELERIAC_BIN=path measures another build (e.g. an older commit's) side by side.
CELERIAC=${CELERIAC_BIN:-$CARGO_TARGET_DIR/release/celeriac}
LOADGEN=${LOADGEN:-$HOME/.cache/celeriac-baseline/loadgen-target/release/loadgen}
PORT=${PORT:-18080}
BASE=http://127.0.0.1:$PORT

# cpu_flags: the CPU's model name and SIMD flags, for the line above every table.
cpu_flags() {
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores, flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o 'avx512[a-z_0-9]*\|avx2\|fma\|avx_vnni\|amx[a-z_0-9]*' | sort -u | tr '\n' ' ')"
}

build_all() {
  [ -n "${CELERIAC_BIN:-}" ] || (cd "$ROOT" && cargo build --release --bin celeriac) >&2
  if [ ! -x "$LOADGEN" ]; then
    [ -f "$SHARED/bench/loadgen/Cargo.toml" ] || { echo "no load generator: $SHARED/bench/loadgen missing (set LOADGEN)" >&2; exit 1; }
    cargo build --release --locked --manifest-path "$SHARED/bench/loadgen/Cargo.toml" \
      --target-dir "$HOME/.cache/celeriac-baseline/loadgen-target" >&2
  fi
}

# start_server CONFIG [extra env...]: starts celeriac on $PORT, waits until it is ready.
start_server() {
  local config=$1
  RUST_LOG=${RUST_LOG:-warn} "$CELERIAC" serve --config "$config" --listen "127.0.0.1:$PORT" \
    > "${LOG:-/tmp/celeriac-bench.log}" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    if curl -sf "$BASE/health/ready" > /dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "${LOG:-/tmp/celeriac-bench.log}" >&2; exit 1; }
    sleep 0.1
  done
  echo "server did not become ready" >&2; exit 1
}

stop_server() {
  [ -n "${SERVER_PID:-}" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }

# spam_config WORKERS THREADS OUT: config/default.toml with that many spam.predict
# workers and intra-op threads each (0 = auto), the model path made absolute; fetches
# the weights if missing.
spam_config() {
  "$ROOT/scripts/fetch-model.sh" models/spam-minilm >&2
  sed -e "s/^concurrency = 2$/concurrency = $1/" -e "s/^intra_op_threads = 0$/intra_op_threads = $2/" \
    -e "s|^model = \"models/spam-minilm\"|model = \"$ROOT/models/spam-minilm\"|" \
    "$ROOT/config/default.toml" > "$3"
}

