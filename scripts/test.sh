#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
# Release mode, so model code runs at speed and one build serves tests and benchmarks.
# The cargo target directory lives outside the clone (CARGO_TARGET_DIR to move it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/celeriac-target}
command -v cargo > /dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
cargo fmt --all -- --check
# Lints on the release profile, so they share the test build's dependencies.
cargo clippy --release --locked --all-targets -- -D warnings
scripts/fetch-model.sh models/spam-minilm
# redis-server and the Python celery client, for the broker tests.
scripts/test-deps.sh
export CELERIAC_PYTHON=${CELERIAC_PYTHON:-${CELERIAC_CACHE:-$HOME/.cache/celeriac}/pyenv/bin/python}
# The precision fidelity bars (tests/model.rs) need the bench inputs and the SMS Spam
# Collection, which live outside the project.
SHARED_DIR=${CELERIAC_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}
if [ -f "$SHARED_DIR/bench/inputs.jsonl" ] && [ -f "$SHARED_DIR/data/sms_spam.csv" ]; then
  export CELERIAC_SHARED=$SHARED_DIR
  echo "precision fidelity bars: checked against $SHARED_DIR"
else
  echo "precision fidelity bars: NOT CHECKED ($SHARED_DIR has no bench/inputs.jsonl and data/sms_spam.csv; set CELERIAC_SHARED; with CI set they fail instead)"
fi
cargo test --release --locked "$@"
# A short fuzz run against the served OpenAPI document (about a minute).
if [ $# = 0 ]; then
  scripts/fuzz.sh
fi
