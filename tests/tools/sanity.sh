#!/usr/bin/env bash
# ansible-test needs the collection at ansible_collections/<ns>/<name>; copy the tracked
# and new (not ignored) files there and run sanity with the venv's Python.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/openfuyao/pd"
mkdir -p "$dest"
cd "$root"
git ls-files -z --cached --others --exclude-standard | \
  xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' | \
  tar --null -T - -cf - | tar -xf - -C "$dest"
cd "$dest"
git init -q . && git add -A >/dev/null
PATH="$root/.venv/bin:$PATH" ansible-test sanity --python 3.11 --local --color no "$@"
