"""inventories/cuda-local through the real playbooks (no GPU needed): plan.yml plans 1P1D on one
GPU for NIXL and for the Mooncake variant; wheelhouse.yml refuses to run without a destination."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "cuda-local" / "cluster.ini"


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(["ansible-playbook", f"playbooks/{name}", "-i", str(INVENTORY), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.parametrize(("variant", "connector", "protocol"), [
    ([], "NixlConnector", "nixl"),
    (["-e", "@inventories/cuda-local/mooncake.yml"], "MooncakeConnector", "mooncake"),
])
def test_cuda_local_plans_1p1d_on_one_gpu(tmp_path, variant, connector, protocol):
    out = tmp_path / "plan.json"
    result = playbook("plan.yml", "-e", f"pd_plan_output={out}", *variant)
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(out.read_text())
    inst = {i["role"]: i for i in plan["instances"]}
    assert set(inst) == {"prefill", "decode"}
    assert plan["proxy"]["protocol"] == protocol
    for i in inst.values():
        assert i["devices"] == [0]
        assert i["kv_transfer_config"]["kv_connector"] == connector
        assert i["argv"][i["argv"].index("--gpu-memory-utilization") + 1] == "0.15"
        assert i["env"]["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    if protocol == "nixl":
        assert inst["prefill"]["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] != inst["decode"]["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"]


def test_wheelhouse_playbook_needs_a_destination():
    result = playbook("wheelhouse.yml")
    assert result.returncode != 0
    assert "wheelhouse_dir is not set: pass -e wheelhouse_dir=DIR" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
