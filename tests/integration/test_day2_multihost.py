"""Day-2 across several inventory hosts (each with its own directories and supervisord, all local).

Prefill on node-p (2 instances, also the proxy host), decode on node-d1 and node-d2. The rolling
restart delegates to each instance's host; scale adds a host at the end of [decode] and then
retires it (moved to [retired]); all under steady load with zero failed requests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_day2_support import Deployment, free_base, private_dirs, roll_order

pytestmark = pytest.mark.skipif(shutil.which("supervisord") is None, reason="needs supervisord (make system-deps)")

HOSTS = ("node-p", "node-d1", "node-d2", "node-d3")


def host_vars(work: Path, host: str, **extra: Any) -> dict[str, Any]:
    return {**private_dirs(work / host), **extra}


def write_inventory(path: Path, work: Path, ports: dict[str, int], decode: list[str], retired: list[str]) -> None:
    hv = {h: host_vars(work, h, pd_decode_http_port_base=ports[h]) for h in HOSTS}
    hv["node-p"]["pd_prefill_http_port_base"] = ports["prefill"]
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "pd_platform": "cpu", "pd_connector": "shared_storage", "pd_runtime": "host",
                 "pd_model": "builtin:tiny-llama", "pd_max_model_len": 512, "pd_bind_host": "127.0.0.1",
                 "pd_proxy_bind_host": "127.0.0.1", "pd_proxy_port": ports["proxy"], "pd_proxy_health_interval": 1,
                 "pd_prefill_instances_per_host": 2, "pd_decode_instances_per_host": 1,
                 "pd_data_dir": str(work / "shared"), "vllm_pd_engine": "simulator"},
        "children": {
            "prefill": {"hosts": {"node-p": hv["node-p"]}},
            "proxy": {"hosts": {"node-p": {}}},
            "decode": {"hosts": {h: hv[h] for h in decode}},
            "retired": {"hosts": {h: hv[h] for h in retired}},
        }}}
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))


def pids(work: Path, host: str) -> dict[str, int | None]:
    conf = work / host / "etc" / "supervisord.conf"
    out = subprocess.run(["supervisorctl", "-c", str(conf), "status"], capture_output=True, text=True,
                         check=False).stdout
    result: dict[str, int | None] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("openfuyao-pd-"):
            result[parts[0].removeprefix("openfuyao-pd-")] = int(parts[3].rstrip(",")) if parts[1] == "RUNNING" else None
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, dict[str, int]]]:
    work = tmp_path_factory.mktemp("day2-multi")
    used: set[int] = set()
    ports = {"prefill": free_base(2, used), "proxy": free_base(1, used)}
    for h in HOSTS:
        ports[h] = free_base(1, used)
    inventory = work / "inventory.yml"
    write_inventory(inventory, work, ports, ["node-d1", "node-d2"], [])
    dep = Deployment(inventory, work, {}, ports["proxy"])
    dep.write_vars()
    try:
        dep.play("site.yml", timeout=1500)
        dep.wait_routable({"prefill-0", "prefill-1", "decode-0", "decode-1"})
        yield dep, ports
    finally:
        for h in HOSTS:
            conf = work / h / "etc" / "supervisord.conf"
            if conf.exists():
                subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, check=False)


def test_rolling_restart_across_hosts_under_load(cluster: tuple[Deployment, dict[str, int]]) -> None:
    dep, _ = cluster
    before = {h: pids(dep.workdir, h) for h in ("node-p", "node-d1", "node-d2")}
    assert before["node-d1"]["decode-0"] and before["node-d2"]["decode-1"]
    with dep.load("multi-roll") as load:
        proc = dep.play("rolling_restart.yml", "-e", '{"day2_roll_roles": ["decode", "prefill"]}')
    assert load.get("failed") == 0, load
    assert roll_order(proc.stdout) == ["decode-0", "decode-1", "prefill-0", "prefill-1"]
    after = {h: pids(dep.workdir, h) for h in ("node-p", "node-d1", "node-d2")}
    assert after["node-d1"]["decode-0"] != before["node-d1"]["decode-0"]
    assert after["node-d2"]["decode-1"] != before["node-d2"]["decode-1"]
    assert after["node-p"]["prefill-0"] != before["node-p"]["prefill-0"]
    assert after["node-p"]["proxy"] == before["node-p"]["proxy"]


def test_scale_out_by_a_host_then_retire_it_under_load(cluster: tuple[Deployment, dict[str, int]]) -> None:
    dep, ports = cluster
    write_inventory(dep.inventory, dep.workdir, ports, ["node-d1", "node-d2", "node-d3"], [])
    with dep.load("multi-scale-out") as load:
        proc = dep.play("scale.yml")
    assert load.get("failed") == 0, load
    assert f"+ decode-2     decode   node-d3 http://127.0.0.1:{ports['node-d3']}" in proc.stdout
    assert pids(dep.workdir, "node-d3")["decode-2"]
    assert "decode-2" in {b["name"] for b in dep.proxy_instances()}

    write_inventory(dep.inventory, dep.workdir, ports, ["node-d1", "node-d2"], ["node-d3"])
    with dep.load("multi-scale-in") as load:
        proc = dep.play("scale.yml")
    assert load.get("failed") == 0, load
    assert f"- decode-2     decode   http://127.0.0.1:{ports['node-d3']}" in proc.stdout
    assert pids(dep.workdir, "node-d3")["decode-2"] is None  # stopped on the retired host
    assert {b["name"] for b in dep.proxy_instances()} == {"prefill-0", "prefill-1", "decode-0", "decode-1"}

    out = dep.workdir / "status.json"
    dep.play("status.yml", "-e", f"day2_status_output={out}")
    doc = json.loads(out.read_text())
    assert doc["problems"] == []
    assert sorted({row[0] for row in doc["rows"]}) == ["node-d1", "node-d2", "node-p"]
