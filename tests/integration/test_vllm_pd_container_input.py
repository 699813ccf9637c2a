"""roles/vllm_pd runtime `container` with a missing image tarball: one line naming the host,
the variable and the fix, before anything is loaded or started. Uses the real Docker engine
(started by tests/tools/dockerd.sh when none runs, and stopped again only if it started it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERD = ROOT / "tests" / "tools" / "dockerd.sh"

PLAYBOOK = """
- name: Container runtime install step with a missing image tarball
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the role's container install step
      ansible.builtin.include_role:
        name: openfuyao.pd.vllm_pd
        tasks_from: install_container.yml
"""


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("dockerd")
    env = dict(os.environ, PD_DOCKERD_STATE=str(state))
    subprocess.run(["bash", str(DOCKERD), "start"], check=True, env=env, timeout=120)
    yield
    subprocess.run(["bash", str(DOCKERD), "stop"], check=False, env=env, timeout=120)


def test_missing_image_tarball_is_one_clear_line(docker_engine: None, tmp_path: Path) -> None:
    playbook = tmp_path / "container.yml"
    playbook.write_text(PLAYBOOK)
    missing = tmp_path / "no-such-image.tar.gz"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(playbook),
         "-e", f"ansible_python_interpreter={sys.executable}",
         "-e", "vllm_pd_container_image=openfuyao-pd-absent-image:0.0.0",
         "-e", f"vllm_pd_container_image_tarball={missing}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert (
        f"localhost: image tarball {missing} (vllm_pd_container_image_tarball) does not exist; "
        "upload it there or set vllm_pd_container_image to an image the host can pull"
    ) in " ".join(out.split()), out
    assert "Traceback" not in out
    # Nothing was loaded or pulled.
    assert "docker load" not in out and "Pull the image" not in out.split("does not exist")[-1]
