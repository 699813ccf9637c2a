#!/usr/bin/env bash
# Builds the local wheelhouse the molecule containers install from, so they never need a
# package registry: the requirements of the project's host-side package (files/connector:
# aiohttp, PyYAML, Mooncake's transfer engine, ...) with their dependencies, setuptools/wheel/pip
# (to build local source trees offline), and that package itself as a wheel.
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

# The project's runtime requirements, every extra included (read from its pyproject.toml),
# plus what pip needs to build local source trees offline.
mapfile -t REQS < <("$PY" - "$ROOT/files/connector/pyproject.toml" <<'PYEOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    project = tomllib.load(fh)["project"]
reqs = list(project.get("dependencies", []))
for extra in project.get("optional-dependencies", {}).values():
    reqs.extend(extra)
print("\n".join(dict.fromkeys(reqs)))
PYEOF
)
REQS+=("setuptools>=61" "wheel" "pip")

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
