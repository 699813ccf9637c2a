#!/usr/bin/env bash
# ansible-test needs the collection at ansible_collections/<ns>/<name>; copy the tracked
# and new (not ignored) files of the collection's Ansible content there and run sanity with
# the venv's Python. files/connector (a standalone Python package with its own pyproject,
# installed on hosts by roles/proxy), bench/, molecule/ and the pytest suites are not
# Ansible plugin code: ruff and their own tests check them.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/openfuyao/pd"
mkdir -p "$dest"
cd "$root"
git ls-files -z --cached --others --exclude-standard -- \
    galaxy.yml meta plugins roles playbooks inventories docs changelogs tests/sanity LICENSE README.md | \
  xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' | \
  tar --null -T - -cf - | tar -xf - -C "$dest"
cd "$dest"
git init -q . && git add -A >/dev/null
# ansible-test bootstraps pip in its sanity venvs with a get-pip script downloaded from the
# Ansible CI host, which this network cannot reach. A stand-in with the same contract
# (argv = pip install options) uses the interpreter's bundled ensurepip, then pip installs
# the requested pip version from the package index like the real script does.
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',\$/\1/p" \
  "$root"/.venv/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1)
pip_version=${pip_version:-24.2}
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [[ ! -s "$cache" ]]; then
  mkdir -p "$(dirname "$cache")"
  cat >"$cache" <<'PY'
import subprocess
import sys

# In a child process: ensurepip blanks PIP_CONFIG_FILE in its own environment, and the
# machine's pip configuration (index, CA bundle) must still apply to the install below.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
# --no-setuptools / --no-wheel are get-pip's own switches, not pip install options.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
PY
fi
PATH="$root/.venv/bin:$PATH" ansible-test sanity --python 3.11 --local --color no "$@"
