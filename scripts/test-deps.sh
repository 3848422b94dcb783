#!/usr/bin/env bash
# What the tests need besides cargo, installed when missing (idempotent, quiet when done):
#   - redis-server, curl and openssl (apt-get; `apt-get update` only when the install
#     fails); the TLS broker tests make their certificates with the openssl command;
#   - a virtualenv with the Python `celery`, `redis` and `flower` packages, `fastapi` and
#     `uvicorn` (the seed's FastAPI app, tests/seed.rs), `schemathesis` (the fuzz step,
#     scripts/fuzz.sh), `openai` and `huggingface-hub` (their clients against the OpenAI
#     and TEI routes, tests/client_apis.rs; numpy for the latter's vectors) from PyPI, cached in
#     ${CELERIAC_CACHE:-~/.cache/celeriac}/pyenv and rebuilt when the pins below change.
# Prints nothing but errors and what it installs. The tests find the venv through
# CELERIAC_PYTHON (set by scripts/test.sh) or at the default path.
set -euo pipefail
CACHE=${CELERIAC_CACHE:-$HOME/.cache/celeriac}
VENV=$CACHE/pyenv
PINS="celery[redis]==5.7.0 redis==8.1.0 flower==2.2.0 fastapi==0.165.0 uvicorn==0.54.0 schemathesis==4.32.5 openai==3.51.0 huggingface-hub==2.4.0 numpy==2.4.6"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo > /dev/null; then sudo "$@"
  else echo "test-deps: need root (or sudo) to run: $*" >&2; return 1; fi
}
missing=()
command -v redis-server > /dev/null || missing+=(redis-server)
command -v curl > /dev/null || missing+=(curl)
command -v openssl > /dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps: apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null \
    || { as_root apt-get update -qq \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null; }
fi

PY=${PYTHON:-python3}
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PINS" ]; then
  echo "test-deps: virtualenv $VENV ($PINS)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  if ! "$PY" -m venv "$VENV"; then
    rm -rf "$VENV"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv > /dev/null
    "$PY" -m venv "$VENV"
  fi
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
  echo "$PINS" > "$VENV/.pins"
fi
