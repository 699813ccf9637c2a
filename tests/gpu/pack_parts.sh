#!/usr/bin/env bash
# Packs a wheelhouse (playbooks/wheelhouse.yml's output) into parts under 60 MiB for a machine
# that takes at most 64 MiB of carried files per command (the project's GPU machine, docs/gpu.md).
# Wheels over 58 MiB are split into NAME.piece.NN; tests/gpu/run_h200.sh joins them back.
#   tests/gpu/pack_parts.sh WHEELHOUSE DEST [EXTRA_FILE...]   (DEST/part1 .. DEST/partN)
set -euo pipefail
SRC=${1:?usage: pack_parts.sh WHEELHOUSE DEST [EXTRA_FILE...]}
DEST=${2:?usage: pack_parts.sh WHEELHOUSE DEST [EXTRA_FILE...]}
shift 2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$SRC"/*.whl "$stage"/
for f in "$@"; do cp "$f" "$stage"/; done
for f in "$stage"/*.whl; do
  if (( $(stat -c %s "$f") > 58 * 1024 * 1024 )); then
    split -b 58M -d -a 2 "$f" "$f.piece."
    rm "$f"
  fi
done
rm -rf "$DEST"
n=1; used=0; mkdir -p "$DEST/part$n"
for f in $(ls -S "$stage"); do
  s=$(stat -c %s "$stage/$f")
  if (( used + s > 60 * 1024 * 1024 )); then n=$((n + 1)); used=0; mkdir -p "$DEST/part$n"; fi
  mv "$stage/$f" "$DEST/part$n/"; used=$((used + s))
done
du -sh "$DEST"/part* | sed 's/^/  /'
echo "$n parts in $DEST"
