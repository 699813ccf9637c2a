#!/usr/bin/env bash
# Builds the local wheelhouse the molecule containers install from, so they never need a
# package registry: aiohttp (and its dependencies), Mooncake's transfer engine
# (mooncake-transfer-engine-non-cuda), setuptools/wheel (to build local source trees), and
# the project's own host-side package (files/connector) as a wheel.
#
# The test image's python3 is bookworm's 3.11, the same minor as the controller's, so wheels
# downloaded here fit the containers. Third-party wheels are downloaded once per requirement
# set (stamp file); the project's wheel is rebuilt every run (a few seconds) so the containers
# always get the working tree's code.
#
# Prints the wheelhouse directory on stdout (last line).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${PD_WHEELHOUSE:-$ROOT/.cache/wheelhouse}"
PY="${PD_WHEELHOUSE_PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3

REQS=(
  "aiohttp>=3.9"
  "mooncake-transfer-engine-non-cuda"
  "setuptools>=61"
  "wheel"
  "pip"
)

log() { echo "build-wheelhouse: $*" >&2; }

mkdir -p "$DEST"
want="$(printf '%s\n' "${REQS[@]}" | sha256sum | cut -c1-12)"
stamp="$DEST/.deps-$want"
if [[ ! -e "$stamp" ]]; then
  log "downloading ${REQS[*]} into $DEST"
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --dest "$DEST" "${REQS[@]}" >&2
  touch "$stamp"
else
  log "third-party wheels present ($DEST)"
fi

# The project's package: rebuilt from the working tree, older builds removed first.
rm -f "$DEST"/openfuyao_pd_connector-*.whl
work="$(mktemp -d /tmp/openfuyao-pd-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$ROOT/files/connector" "$work/src"
# Build isolation from the wheelhouse itself: the setuptools it holds, no registry.
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-index --find-links "$DEST" \
  --wheel-dir "$DEST" "$work/src" >&2
log "built $(basename "$(ls "$DEST"/openfuyao_pd_connector-*.whl)")"
echo "$DEST"
