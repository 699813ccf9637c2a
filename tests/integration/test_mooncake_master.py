"""The mooncake role starts the KV pool's mooncake_master for real on this host, with the flags the
planner gives it for pd_connector ascend_store (lease TTL from the timeout budget, listening on the
host's address), under the host's supervisor; a Mooncake store client puts and gets a block
through it, and a second run changes nothing. Private directories and free ports; run under the
shared lock (it starts a service)."""

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
from test_day2_support import free_base, private_dirs

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the test venv already holds the Mooncake wheel
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        pd_plan: "{{ lookup('ansible.builtin.file', plan_file) | from_json }}"
    - ansible.builtin.include_role:
        name: openfuyao.pd.mooncake
"""

pytestmark = pytest.mark.skipif(not (VENV / "bin" / "mooncake_master").exists(),
                                reason="needs mooncake-transfer-engine-non-cuda in the test venv")


@pytest.fixture(scope="module")
def master():
    from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_connectors as family

    work = Path(tempfile.mkdtemp(prefix="pd-master-"))
    port = free_base(2, set())
    dirs = private_dirs(work, venv=False)
    # The role reads its directories from the plan (hosts.<h>.dirs), as the planner writes them.
    host_dirs = {key: dirs[f"vllm_pd_{key}_dir"] for key in ("conf", "log", "state", "run")}
    plan = {"schema_version": 2, "instances": [],
            "hosts": {"localhost": {"platform": None, "runtime": "host", "dirs": host_dirs}},
            "mooncake": {"hosts": ["localhost"], "master": {
                "host": "localhost", "address": "127.0.0.1", "port": port, "metrics_port": port + 1,
                "lease_ttl_ms": 34000, "args": family.master_args(34000, "127.0.0.1", port + 1)}}}
    (work / "plan.json").write_text(json.dumps(plan))
    (work / "play.yml").write_text(PLAY)
    (work / "vars.json").write_text(json.dumps({
        "plan_file": str(work / "plan.json"), "mooncake_venv": str(VENV), "mooncake_verify": False,
        "mooncake_system_packages": []}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '')}")

    def play() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ansible-playbook", "-i", f"localhost ansible_connection=local ansible_python_interpreter={sys.executable},",
             str(work / "play.yml"), "-e", f"@{work / 'vars.json'}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    try:
        yield work, port, play, Path(dirs["vllm_pd_conf_dir"]) / "supervisord.conf"
    finally:
        conf = Path(dirs["vllm_pd_conf_dir"]) / "supervisord.conf"
        if conf.exists():
            subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_role_starts_the_planned_master_and_a_store_client_uses_it(master):
    work, port, play, conf = master
    first = play()
    assert first.returncode == 0, first.stdout[-3000:]
    status = subprocess.run(["supervisorctl", "-c", str(conf), "status"], capture_output=True, text=True,
                            timeout=60, check=False).stdout
    assert re.search(r"openfuyao-pd-mooncake-master\s+RUNNING", status), status
    # The store client of AscendStoreConnector's Mooncake backend, over TCP (no NPU here).
    probe = f"""
import sys, time
from mooncake.store import MooncakeDistributedStore
s = MooncakeDistributedStore()
for _ in range(100):  # the supervisor reports RUNNING before the master listens
    if s.setup("127.0.0.1", "P2PHANDSHAKE", 16 << 20, 16 << 20, "tcp", "", "127.0.0.1:{port}") == 0:
        break
    time.sleep(0.1)
else:
    sys.exit("no master at 127.0.0.1:{port}")
assert s.put("pd-block", b"kv" * 4096) == 0
print(len(s.get("pd-block")))
s.close()
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.split()[-1] == "8192", out.stdout[-1000:] + out.stderr[-2000:]
    log = Path(json.loads((work / "plan.json").read_text())["hosts"]["localhost"]["dirs"]["log"]) / "mooncake-master.log"
    text = log.read_text(errors="replace")
    assert "default_kv_lease_ttl=34000" in text and "rpc_address=127.0.0.1" in text
    second = play()
    assert second.returncode == 0 and re.search(r"localhost\s+:\s+ok=\d+\s+changed=0\s", second.stdout), \
        second.stdout[-2000:]
