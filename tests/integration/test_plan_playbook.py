"""playbooks/plan.yml against every shipped inventory: real ansible-playbook runs that write
the plan JSON, plus a broken inventory (one clear line per problem, no traceback) and
--check (nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ["local", "ascend-1p1d", "ascend-2p2d", "ucm-xpyd", "hetero-ucm"]
INSTANCE_KEYS = {
    "name",
    "host",
    "role",
    "devices",
    "tensor_parallel_size",
    "data_parallel_size",
    "http_port",
    "kv_port",
    "ports",
    "engine_id",
    "kv_transfer_config",
    "argv",
    "env",
}


def run_playbook(inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        ["ansible-playbook", "playbooks/plan.yml", "-i", str(inventory), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", INVENTORIES)
def test_plan_playbook_writes_plan(name, tmp_path):
    out = tmp_path / "plan.json"
    result = run_playbook(ROOT / "inventories" / name / "cluster.ini", "-e", f"pd_plan_output={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(out.read_text())
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert plan["schema_version"] == 1
    assert plan["instances"]
    for inst in plan["instances"]:
        assert set(inst) >= INSTANCE_KEYS, INSTANCE_KEYS - set(inst)
        assert inst["argv"] and all(isinstance(a, str) for a in inst["argv"])
        assert all(isinstance(v, str) for v in inst["env"].values())
    for role in ("prefill", "decode"):
        backends = plan["proxy"][role]
        assert backends and all({"host", "port"} <= set(b) for b in backends)
        assert [b["port"] for b in backends] == [
            i["http_port"] for i in plan["instances"] if i["role"] == role
        ]
    # The table is printed: one line per instance with its engine id.
    for inst in plan["instances"]:
        assert any(
            inst["name"] in line and line.rstrip().endswith(inst["engine_id"])
            for line in result.stdout.splitlines()
        )
    # Second run: same plan, nothing changes.
    again = run_playbook(ROOT / "inventories" / name / "cluster.ini", "-e", f"pd_plan_output={out}")
    assert again.returncode == 0 and "changed=0" in again.stdout
    assert json.loads(out.read_text()) == plan


def test_check_mode_writes_nothing(tmp_path):
    out = tmp_path / "plan.json"
    result = run_playbook(
        ROOT / "inventories" / "local" / "cluster.ini", "--check", "-e", f"pd_plan_output={out}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not out.exists()


def test_broken_inventory_fails_with_one_line_each(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text(
        "[prefill]\nn1 ansible_connection=local pd_platform=ascend pd_model=/m pd_prefill_tp=1 pd_decode_tp=2\n"
        "[decode]\nn1\n[proxy]\nn1 pd_proxy_port=8100 pd_prefil_dp=2\n"
    )
    out = tmp_path / "plan.json"
    result = run_playbook(inv, "-e", f"pd_plan_output={out}")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in text
    assert "prefill tp 1 (prefill-0 on n1) < decode tp 2 (decode-0 on n1) with connector mooncake" in text
    assert "port clash: prefill-0 http 8100 overlaps proxy http 8100: change pd_proxy_port" in text
    assert not out.exists()


def test_untemplatable_variable_is_one_line(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text(
        '[prefill]\nlocalhost ansible_connection=local pd_model="{{ nope_undefined }}"\n[decode]\nlocalhost\n'
        "[proxy]\nlocalhost\n"
    )
    result = run_playbook(inv, "-e", f"pd_plan_output={tmp_path / 'plan.json'}")
    assert result.returncode != 0
    assert (
        "host localhost: variable pd_model cannot be templated: 'nope_undefined' is undefined"
        in result.stdout + result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
