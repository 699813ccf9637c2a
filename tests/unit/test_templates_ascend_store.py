"""The vllm_pd role's rendered files for vllm-ascend's KV-pool inventory (inventories/ascend-store),
rendered by Ansible itself from the planner's plan: each run.sh, executed with a recording `vllm`
on PATH, exports the guide's environment (kv_pool.md, Step 2.3.1) and runs the plan's MultiConnector
argv; the mooncake.json that MOONCAKE_CONFIG_PATH names is written with the master's address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import build_plan
from plan_support import load_inventory

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("a2-p1",)  # the prefill host: its instance and the master's address in mooncake.json
PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        pd_plan: "{{ lookup('ansible.builtin.file', plan_file) | from_json }}"
    - ansible.builtin.include_role:
        name: openfuyao.pd.vllm_pd
        tasks_from: render.yml
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def rendered() -> Iterator[tuple[Path, dict[str, Any]]]:
    tmp = Path(tempfile.mkdtemp(prefix="pd-render-store-"))
    plan_file = tmp / "plan.json"
    inventory = load_inventory("ascend-store")
    for hv in inventory["hostvars"].values():
        hv["pd_data_dir"] = str(tmp / "data")  # the mooncake.json files land in the test's directory
        hv["vllm_pd_conf_dir"] = str(tmp / "etc")  # and the instance files (the plan's hosts.<h>.dirs.conf)
    plan_file.write_text(json.dumps(build_plan(inventory)))
    (tmp / "play.yml").write_text(PLAYBOOK)
    (tmp / "hosts.ini").write_text("".join(
        f"{h} ansible_connection=local ansible_python_interpreter={sys.executable}\n" for h in HOSTS))
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(tmp / "hosts.ini"), str(tmp / "play.yml"),
         "-e", f"plan_file={plan_file}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    yield tmp / "etc" / "instances", json.loads(plan_file.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


def _run_recorded(script: Path, tmp: Path) -> dict[str, Any]:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    rec = tmp / "record.json"
    fake = bindir / "vllm"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(rec)!r}, 'w'))\n")
    fake.chmod(0o755)
    subprocess.run(["bash", str(script)], env={"PATH": f"{bindir}:/usr/bin:/bin"}, check=True, timeout=60)
    return json.loads(rec.read_text())


def test_launch_script_exports_the_guides_env_and_runs_the_multiconnector(rendered, tmp_path):
    name, buffsize, lookup = "prefill-0", "256", "0"
    instances, plan = rendered
    inst = next(i for i in plan["instances"] if i["name"] == name)
    got = _run_recorded(instances / name / "run.sh", tmp_path)
    assert got["argv"][1:] == inst["argv"][1:]
    ktc = json.loads(got["argv"][got["argv"].index("--kv-transfer-config") + 1])
    assert ktc["kv_connector"] == "MultiConnector"
    assert ktc["kv_connector_extra_config"]["connectors"][1]["kv_connector_extra_config"]["lookup_rpc_port"] == lookup
    env = got["env"]
    assert (env["PYTHONHASHSEED"], env["HCCL_INTRA_ROCE_ENABLE"], env["HCCL_BUFFSIZE"]) == ("0", "1", buffsize)
    assert (env["TASK_QUEUE_ENABLE"], env["HCCL_OP_EXPANSION_MODE"]) == ("1", "AIV")
    doc = json.loads(Path(env["MOONCAKE_CONFIG_PATH"]).read_text())
    assert doc["master_server_address"] == "192.0.2.11:50088" and doc["protocol"] == "ascend"
