"""Per-connector output of the planner: kv-transfer config, env, argv, ports and proxy
protocol for each platform x connector pair, and the facts-driven parts (ping targets,
physical ids for the Ascend Direct ranges)."""

from __future__ import annotations

import json

import yaml
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import build_plan
from plan_support import flags, load_inventory


def plan_for(platform, connector, **extra):
    hv = {"pd_platform": platform, "pd_connector": connector, "pd_model": "/models/m", **extra}
    inv = {
        "groups": {"prefill": ["p"], "decode": ["d"], "proxy": ["x"]},
        "hostvars": {
            "p": {**hv, "ansible_host": "10.0.0.1"},
            "d": {**hv, "ansible_host": "10.0.0.2"},
            "x": {"ansible_host": "10.0.0.3"},
        },
    }
    plan = build_plan(inv)
    return plan, {i["role"]: i for i in plan["instances"]}


def test_local_inventory_is_the_verified_cpu_1p1d():
    plan = build_plan(load_inventory("local"))
    p, d = plan["instances"]
    assert (p["host"], d["host"], plan["proxy"]["host"]) == ("localhost",) * 3
    assert p["argv"][:5] == [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/var/lib/openfuyao-pd/models/tiny-llama",
    ]
    f = flags(p["argv"])
    assert f["--served-model-name"] == "tiny-llama" and f["--max-model-len"] == "512"
    assert f["--dtype"] == "bfloat16" and f["--enforce-eager"] is True
    for inst, role in ((p, "kv_producer"), (d, "kv_consumer")):
        assert flags(inst["argv"])["--kv-transfer-config"] == {
            "kv_connector": "ExampleConnector",
            "kv_role": role,
            "kv_connector_extra_config": {"shared_storage_path": "/var/lib/openfuyao-pd/kv"},
        }
        assert inst["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}
        assert inst["devices"] == [] and inst["visible_devices_env"] is None
        assert inst["health_url"] == f"http://127.0.0.1:{inst['http_port']}/health"
    assert plan["proxy"]["protocol"] == "centralized" and plan["proxy"]["model"] == "tiny-llama"
    assert plan["storage"]["path"] == "/var/lib/openfuyao-pd/kv"


def test_nixl_on_cuda():
    plan, inst = plan_for("cuda", "nixl", pd_tp=2)
    for role, base in (("prefill", 5600), ("decode", 5800)):
        i = inst[role]
        assert i["kv_transfer_config"] == {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "engine_id": i["engine_id"],
        }
        assert i["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] == str(base) and i["kv_port"] == base
        assert i["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
        # Both sides listen on their side channel.
        assert {"start": base, "end": base + 1, "purpose": "kv side channel", "kind": "bind"} in i["ports"]
    assert plan["proxy"]["protocol"] == "nixl"


def test_upstream_mooncake_on_cuda_uses_bootstrap_port():
    plan, inst = plan_for("cuda", "mooncake")
    p, d = inst["prefill"], inst["decode"]
    assert p["kv_transfer_config"]["kv_connector"] == "MooncakeConnector"
    assert p["env"]["VLLM_MOONCAKE_BOOTSTRAP_PORT"] == "8998" and d["kv_port"] is None
    assert {"start": 8998, "end": 8998, "purpose": "mooncake bootstrap", "kind": "bind"} in p["ports"]
    assert plan["proxy"]["protocol"] == "mooncake"
    assert plan["proxy"]["prefill"][0]["bootstrap_port"] == 8998
    assert plan["proxy"]["prefill"][0]["bootstrap_host"] == "10.0.0.1"
    assert plan["mooncake"]["hosts"] == ["d", "p"]


def test_ascend_mooncake_auto_ports_clear_of_random_ranges():
    plan, inst = plan_for("ascend", "mooncake", pd_tp=4, pd_devices_per_host=16, pd_dp=2)
    p = inst["prefill"]
    # 16 NPUs x 1000 ADXL ports from 20000: kv ports start at 36000; tp4 x dp2 = 8 listeners.
    assert p["kv_port"] == 36000
    assert {"start": 36000, "end": 36007, "purpose": "kv side channel", "kind": "bind"} in p["ports"]
    assert {
        "start": p["dp_rpc_port"],
        "end": p["dp_rpc_port"],
        "purpose": "data parallel rpc",
        "kind": "bind",
    } in p["ports"]
    assert not plan["warnings"]
    assert p["kv_transfer_config"]["kv_connector_extra_config"] == {
        "prefill": {"dp_size": 2, "tp_size": 4},
        "decode": {"dp_size": 2, "tp_size": 4},
    }
    assert p["env"]["HCCL_IF_IP"] == "10.0.0.1"
    assert plan["proxy"]["protocol"] == "mooncake_v1"


def test_ucm_posix_gc_on_first_instance_only():
    plan, inst = plan_for(
        "ascend",
        "ucm",
        pd_ucm_storage_backends="/mnt/kv",
        pd_ucm_posix_capacity_gb=1024,
        pd_ucm_config_file="/etc/ucm.yaml",
    )
    p, d = inst["prefill"], inst["decode"]
    conf_p = yaml.safe_load(p["files"]["/etc/ucm.yaml"])["ucm_connectors"][0]["ucm_connector_config"]
    conf_d = yaml.safe_load(d["files"]["/etc/ucm.yaml"])["ucm_connectors"][0]["ucm_connector_config"]
    assert conf_p["posix_capacity_gb"] == 1024 and "posix_capacity_gb" not in conf_d
    assert p["env"]["PYTHONHASHSEED"] == d["env"]["PYTHONHASHSEED"]
    assert plan["storage"] == {"path": "/mnt/kv", "hosts": [], "clients": ["p", "d"]}


def test_ucm_two_configs_on_one_host_get_distinct_paths():
    inv = {
        "groups": {"prefill": ["n"], "decode": ["n"], "proxy": ["n"]},
        "hostvars": {
            "n": {
                "pd_platform": "cuda",
                "pd_connector": "ucm",
                "pd_model": "/m",
                "pd_ucm_storage_backends": "/mnt/kv",
                "pd_ucm_posix_capacity_gb": 64,
            }
        },
    }
    plan = build_plan(inv)
    paths = [next(iter(i["files"])) for i in plan["instances"]]
    assert len(set(paths)) == 2
    for i in plan["instances"]:
        assert i["kv_transfer_config"]["kv_connector_extra_config"]["UCM_CONFIG_FILE"] == next(
            iter(i["files"])
        )


def test_facts_give_ping_targets_and_physical_ranges():
    def chips(base_ip, phys):
        return {
            "chips": [
                {
                    "logic_id": i,
                    "phy_id": phys[i],
                    "health": "OK",
                    "busy": False,
                    "device_ip": f"{base_ip}.{i}",
                }
                for i in range(8)
            ]
        }

    inv = {
        "groups": {"prefill": ["a"], "decode": ["b"], "proxy": ["a"]},
        "hostvars": {h: {"pd_platform": "ascend", "pd_model": "/m", "pd_tp": 2} for h in ("a", "b")},
        "facts": {"a": chips("10.1.0", [4, 5, 6, 7, 0, 1, 2, 3]), "b": chips("10.2.0", list(range(8)))},
    }
    plan = build_plan(inv)
    assert plan["hosts"]["a"]["ping_targets"] == ["10.2.0.0", "10.2.0.1"]
    assert plan["hosts"]["b"]["ping_targets"] == ["10.1.0.0", "10.1.0.1"]
    p = plan["instances"][0]
    adxl = [x for x in p["ports"] if x["purpose"].startswith("ascend direct")]
    # Logic 0,1 are physical 4,5 on host a: their ADXL ranges follow the physical id
    # (100 ports a device on the default Mooncake, test_plan_mooncake_ports.py has both rules).
    assert [(x["start"], x["end"]) for x in adxl] == [(20400, 20499), (20500, 20599)]


def test_plan_is_json_and_deterministic():
    inv = load_inventory("ascend-2p2d")
    a, b = build_plan(inv), build_plan(inv)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    hosts = {i["host"] for i in a["instances"]}
    assert hosts == {"a2-p1", "a2-p2", "a2-d1", "a2-d2"}
    assert a["proxy"]["host"] == "pd-proxy" and a["proxy"]["options"]["routing"] == "least_load"
    assert all(
        i["scheduling_policy"] == ("priority" if i["role"] == "prefill" else None) for i in a["instances"]
    )
