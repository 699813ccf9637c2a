"""A directory set on one host of the inventory reaches vllm_pd's files through the plan.

Two local hosts (node-p: prefill and proxy; node-d: decode); node-d alone sets vllm_pd_conf_dir
and vllm_pd_log_dir in its inventory entry. The planner puts them in pd_plan.hosts.node-d.dirs;
vllm_pd's render entry point writes each host's instance files and directories where its plan
entry says, and teardown.yml (which plans too) removes them from there. A reviewed plan file
(-e pd_plan_file) that puts node-d's configuration elsewhere wins over the inventory: the role
reads the plan, not the variable. Nothing is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

PLAY = """
- name: Plan the layout once and publish it to every host
  ansible.builtin.import_playbook: {root}/playbooks/plan_gate.yml

- name: Render the instance files
  hosts: prefill:decode
  gather_facts: false
  tasks:
    - name: Render this host's instance files from the plan
      ansible.builtin.include_role:
        name: openfuyao.pd.vllm_pd
        tasks_from: render.yml
"""


def dirs_of(base: Path) -> dict[str, str]:
    return {f"vllm_pd_{key}_dir": str(base / key) for key in ("conf", "log", "state", "run")}


def write_inventory(work: Path) -> dict[str, dict[str, str]]:
    """The inventory; returns each host's directories as the inventory sets them."""
    dirs = {"node-p": dirs_of(work / "node-p"), "node-d": dirs_of(work / "node-d")}
    # The override under test: only node-d, only in its inventory entry (not -e, not group_vars).
    dirs["node-d"]["vllm_pd_conf_dir"] = str(work / "srv" / "pd" / "etc")
    dirs["node-d"]["vllm_pd_log_dir"] = str(work / "srv" / "pd" / "log") + "/"  # trailing / as typed
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "pd_platform": "cpu", "pd_connector": "shared_storage", "pd_runtime": "host",
                 "pd_model": "builtin:tiny-llama", "pd_max_model_len": 512, "pd_bind_host": "127.0.0.1",
                 "pd_proxy_bind_host": "127.0.0.1", "pd_proxy_port": 47190,
                 "pd_prefill_instances_per_host": 1, "pd_decode_instances_per_host": 1,
                 "pd_data_dir": str(work / "shared"), "vllm_pd_engine": "simulator",
                 "vllm_pd_venv": str(work / "venv")},
        "children": {
            "prefill": {"hosts": {"node-p": {**dirs["node-p"], "pd_prefill_http_port_base": 47100}}},
            "decode": {"hosts": {"node-d": {**dirs["node-d"], "pd_decode_http_port_base": 47150}}},
            "proxy": {"hosts": {"node-p": {}}},
        }}}
    (work / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    return dirs


def play(work: Path, playbook: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(["ansible-playbook", str(playbook), "-i", str(work / "inventory.yml"), *args],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{playbook.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return proc


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} if path.exists() else set()


def test_a_per_host_directory_reaches_the_rendered_files_and_teardown(tmp_path: Path) -> None:
    work = tmp_path
    dirs = write_inventory(work)
    (work / "play.yml").write_text(PLAY.format(root=ROOT))
    play(work, work / "play.yml")

    instance_files = {"env", "kv_transfer.json", "run.sh"}
    conf_p, conf_d = Path(dirs["node-p"]["vllm_pd_conf_dir"]), Path(dirs["node-d"]["vllm_pd_conf_dir"])
    # Each host's instance files in its own configuration directory, and nowhere else.
    assert files_under(conf_p) == {f"instances/prefill-0/{f}" for f in instance_files}
    assert files_under(conf_d) == {f"instances/decode-0/{f}" for f in instance_files}
    assert not (work / "node-d" / "conf").exists()  # node-d's default-style path is not used
    # The launch script reads the environment file next to it, in the overridden directory.
    assert str(conf_d / "instances" / "decode-0" / "env") in (conf_d / "instances" / "decode-0" / "run.sh").read_text()
    # The other directories the role creates: node-d's log directory is its own (the plan drops the
    # trailing /), its state directory the one it sets like every host.
    for host in ("node-p", "node-d"):
        assert Path(dirs[host]["vllm_pd_log_dir"]).is_dir() and Path(dirs[host]["vllm_pd_state_dir"]).is_dir()
    assert not (work / "node-d" / "log").exists()

    # teardown.yml plans first and removes each host's rendered files from its own directory.
    play(work, ROOT / "playbooks" / "teardown.yml")
    assert files_under(conf_p) == set() and files_under(conf_d) == set()
    assert conf_d.is_dir()  # the directory itself is the operator's

    # The plan, not the variable: a reviewed plan that moves node-d's configuration is obeyed.
    plan_file = work / "plan.json"
    play(work, ROOT / "playbooks" / "plan.yml", "-e", f"pd_plan_output={plan_file}")
    plan = json.loads(plan_file.read_text())
    assert plan["hosts"]["node-d"]["dirs"]["conf"] == str(conf_d)
    assert plan["hosts"]["node-d"]["dirs"]["log"] == str(work / "srv" / "pd" / "log")
    reviewed = work / "reviewed" / "etc"
    plan["hosts"]["node-d"]["dirs"]["conf"] = str(reviewed)
    plan_file.write_text(json.dumps(plan))
    play(work, work / "play.yml", "-e", f"pd_plan_file={plan_file}")
    assert files_under(reviewed) == {f"instances/decode-0/{f}" for f in instance_files}
    assert files_under(conf_d) == set()
