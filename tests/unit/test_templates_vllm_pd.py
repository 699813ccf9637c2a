"""The vllm_pd role's rendered files for the seed's scenario (inventories/ascend-1p1d), rendered
by Ansible itself from the planner's plan, against the seed's own commands:

- run.sh of each instance, executed with a recording `vllm` on PATH, exports exactly the seed's
  run_prefill.sh / run_decode.sh variables and runs exactly the seed's `vllm serve` argv;
- the container launcher's `docker run` carries the seed's devices, mounts and options.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The seed's launch scripts (reference/seeds: "run_prefill.sh" / "run_decode.sh"), verbatim
# apart from line breaks, as the golden expectation.
SEED_ENV = {
    "HCCL_EXEC_TIMEOUT": "204", "HCCL_CONNECT_TIMEOUT": "120", "HCCL_IF_IP": "0.0.0.0",
    "GLOO_SOCKET_IFNAME": "eth0", "TP_SOCKET_IFNAME": "eth0", "HCCL_SOCKET_IFNAME": "eth0",
    "VLLM_USE_V1": "1",
    "LD_LIBRARY_PATH": "/usr/local/Ascend/ascend-toolkit/latest/python/site-packages:$LD_LIBRARY_PATH",
}
SEED_VISIBLE = {"prefill-0": "0,1", "decode-0": "2,3"}
SEED_SERVE = {
    "prefill-0": """vllm serve ./Qwen3-8B --host 0.0.0.0 --port 8107 --tensor-parallel-size 2 --seed 1024
      --max-model-len 2000 --max-num-batched-tokens 2000 --trust-remote-code --enforce-eager
      --data-parallel-size 1 --data-parallel-address localhost --data-parallel-rpc-port 9100
      --gpu-memory-utilization 0.8 --kv-transfer-config
      '{"kv_connector": "MooncakeConnectorV1", "kv_buffer_device": "npu", "kv_role": "kv_producer",
        "kv_parallel_size": 1, "kv_port": "20001", "engine_id": "0", "kv_rank": 0,
        "kv_connector_module_path": "vllm_ascend.distributed.mooncake_connector",
        "kv_connector_extra_config": {"prefill": {"dp_size": 1, "tp_size": 2},
                                      "decode": {"dp_size": 1, "tp_size": 2}}}'""",
    "decode-0": """vllm serve ./Qwen3-8B --host 0.0.0.0 --port 8207 --tensor-parallel-size 2 --seed 1024
      --max-model-len 2000 --max-num-batched-tokens 2000 --trust-remote-code --enforce-eager
      --data-parallel-size 1 --data-parallel-address localhost --data-parallel-rpc-port 9100
      --gpu-memory-utilization 0.8 --no-enable-prefix-caching --kv-transfer-config
      '{"kv_connector": "MooncakeConnectorV1", "kv_buffer_device": "npu", "kv_role": "kv_consumer",
        "kv_parallel_size": 1, "kv_port": "20002", "engine_id": "1", "kv_rank": 1,
        "kv_connector_module_path": "vllm_ascend.distributed.mooncake_connector",
        "kv_connector_extra_config": {"prefill": {"dp_size": 1, "tp_size": 2},
                                      "decode": {"dp_size": 1, "tp_size": 2}}}'""",
}
# The seed's `docker run` (step 2.3): options, devices and mounts.
SEED_DOCKER = """--net=host --shm-size=500g --privileged=true -w /home
  --device=/dev/davinci_manager --device=/dev/hisi_hdc --device=/dev/devmm_svm --entrypoint=bash
  -v /mnt:/mnt -v /data:/data -v /dev:/dev -v /usr/local/Ascend/driver:/usr/local/Ascend/driver
  -v /usr/local/dcmi:/usr/local/dcmi -v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi
  -v /usr/local/sbin:/usr/local/sbin -v /home:/home -v /tmp:/tmp -v /opt:/opt
  -v /usr/share/zoneinfo/Asia/Shanghai:/etc/localtime"""

PLAYBOOK = """
- hosts: npu-node1
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
def rendered() -> Iterator[Path]:
    # Our own directory: pytest's numbered temp dirs are pruned by concurrent pytest runs.
    tmp = Path(tempfile.mkdtemp(prefix="pd-render-"))
    plan = tmp / "plan.json"
    inv = ROOT / "inventories" / "ascend-1p1d" / "cluster.ini"
    # The directory is a planner input: the role renders where the plan's hosts.<h>.dirs.conf says.
    proc = subprocess.run(["ansible-playbook", "-i", str(inv), str(ROOT / "playbooks" / "plan.yml"),
                           "-e", f"pd_plan_output={plan}", "-e", f"vllm_pd_conf_dir={tmp / 'etc'}"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    (tmp / "play.yml").write_text(PLAYBOOK)
    (tmp / "hosts.ini").write_text(f"npu-node1 ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(tmp / "hosts.ini"), str(tmp / "play.yml"),
         "-e", f"plan_file={plan}", "-e", "vllm_pd_container_image=mindie:2.1.RC1"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "npu-node1" in proc.stdout and "skipping: no hosts matched" not in proc.stdout
    yield tmp / "etc" / "instances"
    shutil.rmtree(tmp, ignore_errors=True) if not os.environ.get("PD_KEEP_RENDER") else None


def _run_recorded(script: Path, tmp: Path) -> dict[str, Any]:
    """Run the launch script with a `vllm` on PATH that records its argv and environment."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    rec = tmp / "record.json"
    fake = bindir / "vllm"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(rec)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LD_LIBRARY_PATH": "/orig"}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=60)
    return json.loads(rec.read_text())


@pytest.mark.parametrize("name", ["prefill-0", "decode-0"])
def test_launch_script_runs_the_seeds_command(rendered: Path, name: str, tmp_path: Path) -> None:
    got = _run_recorded(rendered / name / "run.sh", tmp_path)
    want = shlex.split(SEED_SERVE[name])
    # argv[0] is resolved on PATH; the kv-transfer JSON is compared as data (spacing differs).
    assert Path(got["argv"][0]).name == "vllm"
    assert got["argv"][1:-1] == want[1:-1]
    # Deliberate deviation: the seed numbers its engines by hand ("0", "1"); the plan's engine id
    # is a function of (host, role, index on host), stable when the cluster is scaled.
    seed_ktc = json.loads(want[-1])
    assert seed_ktc["engine_id"] == {"prefill-0": "0", "decode-0": "1"}[name]
    seed_ktc["engine_id"] = "{}-npu-node1-0".format(name.split("-")[0])
    assert json.loads(got["argv"][-1]) == seed_ktc
    for key, value in SEED_ENV.items():
        assert got["env"][key] == value.replace("$LD_LIBRARY_PATH", "/orig"), key
    assert got["env"]["ASCEND_RT_VISIBLE_DEVICES"] == SEED_VISIBLE[name]


def test_env_file_is_private(rendered: Path) -> None:
    for name in SEED_SERVE:
        assert (rendered / name / "env").stat().st_mode & 0o777 == 0o600
        assert (rendered / name / "env").read_text().startswith("#")  # ansible_managed header


@pytest.mark.parametrize("name", ["prefill-0", "decode-0"])
def test_container_run_carries_the_seeds_devices_mounts_and_options(rendered: Path, name: str) -> None:
    text = (rendered / name / "container.sh").read_text()
    subprocess.run(["bash", "-n", str(rendered / name / "container.sh")], check=True)
    line = text[text.index("exec docker run"):].replace("\\\n", " ")
    argv = shlex.split(line.splitlines()[0])
    assert argv[:3] == ["exec", "docker", "run"]
    seed = shlex.split(SEED_DOCKER)
    opts = argv[3:]
    # Every seed option appears, in the seed's order, with its value right after it.
    pos = -1
    for i, tok in enumerate(seed):
        if tok == "-v" or tok == "-w":
            continue
        flag = seed[i - 1] if i and seed[i - 1] in ("-v", "-w") else None
        j = next(k for k in range(pos + 1, len(opts)) if opts[k] == tok and (flag is None or opts[k - 1] == flag))
        assert j > pos, tok
        pos = j
    assert "mindie:2.1.RC1" in argv
    assert argv[-1].endswith(f"/instances/{name}/run.sh")
