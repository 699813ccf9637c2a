"""The mooncake role for real on this host: installs the cpu wheel into a fresh venv, verifies
with a loopback TCP transfer between two processes (every byte checked), is idempotent, and a
broken install fails with one line naming the host and the fix."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PLAN = {"schema_version": 1, "mooncake": {"hosts": ["localhost"], "master": None},
        "hosts": {"localhost": {"platform": "cpu", "runtime": "host"}}, "instances": []}
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        pd_plan: "{{ lookup('ansible.builtin.file', plan_file) | from_json }}"
    - ansible.builtin.include_role:
        name: openfuyao.pd.mooncake
"""


def run(tmp: Path, venv: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        ["ansible-playbook", "-i", f"localhost ansible_connection=local ansible_python_interpreter={sys.executable},",
         str(tmp / "play.yml"), "-e", f"plan_file={tmp / 'plan.json'}", "-e", f"mooncake_venv={venv}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)


@pytest.fixture(scope="module")
def workdir() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="pd-mooncake-"))
    (tmp / "play.yml").write_text(PLAY)
    (tmp / "plan.json").write_text(json.dumps(PLAN))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_install_and_loopback_transfer_then_idempotent(workdir: Path) -> None:
    venv = workdir / "venv"
    first = run(workdir, venv)
    assert first.returncode == 0, first.stdout[-3000:]
    text = " ".join(first.stdout.split())  # the callback wraps long messages
    assert re.search(r"Mooncake TCP loopback on localhost: 8388608 bytes in [0-9.]+ s .* every byte checked", text)
    assert (venv / "bin" / "mooncake_master").exists()
    second = run(workdir, venv)
    assert second.returncode == 0
    assert re.search(r"localhost\s+:\s+ok=\d+\s+changed=0\s", second.stdout), second.stdout[-2000:]


def test_unusable_engine_fails_with_one_line(workdir: Path) -> None:
    # A venv without the engine and an empty wheelhouse: pip cannot install it offline.
    empty = workdir / "wheels"
    empty.mkdir(exist_ok=True)
    proc = run(workdir, workdir / "venv-empty", "-e", "mooncake_install_method=wheelhouse",
               "-e", f"mooncake_wheelhouse={empty}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout
    assert "fatal: [localhost]" in proc.stdout
