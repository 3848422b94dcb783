#!/usr/bin/env bash
# Sets up and runs the main job: builds celeriac in release mode and serves the default
# configuration. Extra arguments go to `celeriac serve` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/celeriac-target}
CONFIG=${CONFIG:-config/default.toml}
scripts/fetch-model.sh models/spam-minilm
cargo build --release --locked --bin celeriac
exec "$CARGO_TARGET_DIR/release/celeriac" serve --config "$CONFIG" "$@"
