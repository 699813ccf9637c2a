"""Golden and planner tests of vllm-ascend's layerwise P2P and KV-pool connectors and of the
per-role environment defaults, against vllm-ascend's own guides (HEAD 182b75ea84, 2026-08-22).

The expected values below are the guides' values, restated with the file and the lines they
stand on; where the plan differs on purpose the test says why.

L = docs/source/tutorials/features/pd_disaggregation_mooncake_multi_node.md
    (https://github.com/vllm-project/vllm-ascend/blob/main/docs/source/tutorials/features/pd_disaggregation_mooncake_multi_node.md)
S = docs/source/user_guide/feature_guide/kv_pool.md
    (https://github.com/vllm-project/vllm-ascend/blob/main/docs/source/user_guide/feature_guide/kv_pool.md)
"""

from __future__ import annotations

import copy
import json

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan
from plan_support import load_inventory

# L lines 267-280 (Layerwise, "Prefiller node 1") and 377-390 ("Decoder node 1"): every node's exports.
GUIDE_ENV = {
    "OMP_PROC_BIND": "false",
    "OMP_NUM_THREADS": "10",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TASK_QUEUE_ENABLE": "1",
    "HCCL_OP_EXPANSION_MODE": "AIV",
    "VLLM_USE_V1": "1",
    "GLOO_SOCKET_IFNAME": "eth0",  # nic_name="eth0"
    "TP_SOCKET_IFNAME": "eth0",
    "HCCL_SOCKET_IFNAME": "eth0",
}
GUIDE_BUFFSIZE = {"prefill": "256", "decode": "600"}  # L line 276 (prefillers) / line 386 (decoders)


def by_name(plan):
    return {i["name"]: i for i in plan["instances"]}


def argv_ktc(inst):
    return json.loads(inst["argv"][inst["argv"].index("--kv-transfer-config") + 1])


@pytest.fixture(scope="module")
def layerwise():
    return build_plan(load_inventory("ascend-layerwise"))


@pytest.fixture(scope="module")
def store_inventory():
    return load_inventory("ascend-store")


@pytest.fixture(scope="module")
def store(store_inventory):
    return build_plan(store_inventory)


# ------------------------------------------------------------------------------ layerwise


@pytest.mark.parametrize(
    ("name", "kv_role", "kv_port"),
    [
        ("prefill-0", "kv_producer", "36000"),  # L lines 303-305
        ("prefill-1", "kv_producer", "36100"),  # L lines 358-360 (Prefiller node 2)
        ("decode-0", "kv_consumer", "36200"),  # L lines 413-415
        ("decode-1", "kv_consumer", "36200"),  # L lines 468-470 (Decoder node 2)
    ],
)
def test_layerwise_kv_transfer_config_is_the_guides(layerwise, name, kv_role, kv_port):
    ktc = argv_ktc(by_name(layerwise)[name])
    assert ktc["kv_connector"] == "MooncakeLayerwiseConnector"
    assert (ktc["kv_role"], ktc["kv_port"]) == (kv_role, kv_port)
    extra = ktc["kv_connector_extra_config"]
    assert extra["prefill"] == {"dp_size": 2, "tp_size": 8}  # L lines 307-310
    # L lines 311-314 say decode dp_size 32: one DP group of 32 ranks over two hosts, launched per
    # rank by launch_online_dp.py. The plan runs one engine per decode host (dp 16, tp 1), and each
    # engine is one DP group; its kv config describes that group.
    assert extra["decode"] == {"dp_size": 16, "tp_size": 1}
    assert ktc["kv_load_failure_policy"] == "recompute"  # the inventory asks for it (S lines 13-20)


@pytest.mark.parametrize("name", ["prefill-0", "prefill-1", "decode-0", "decode-1"])
def test_layerwise_env_has_the_guides_exports(layerwise, name):
    inst = by_name(layerwise)[name]
    env = inst["env"]
    assert {k: env[k] for k in GUIDE_ENV} == GUIDE_ENV
    assert env["HCCL_BUFFSIZE"] == GUIDE_BUFFSIZE[inst["role"]]
    assert env["HCCL_IF_IP"] == inst["address"]  # local_ip of that node (L lines 265-268)
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(str(d) for d in range(16))  # 16 dies a host


def test_layerwise_proxy_is_decode_first_on_the_guides_port(layerwise):
    proxy = layerwise["proxy"]
    # L lines 726 and 733-735: the layerwise proxy (D first) on port 1999 at the first prefill host.
    assert (proxy["protocol"], proxy["port"], proxy["address"]) == ("mooncake_layerwise", 1999, "192.0.0.1")


def test_layerwise_decode_listens_on_its_kv_block(layerwise):
    """The prefill pushes into the decode, so the decode binds kv_port + dp_rank * tp + tp_rank too."""
    d = by_name(layerwise)["decode-0"]
    kv = [p for p in d["ports"] if p["purpose"] == "kv side channel"]
    assert kv == [{"start": 36200, "end": 36215, "purpose": "kv side channel", "kind": "bind"}]


# ------------------------------------------------------------------------------ KV pool


@pytest.mark.parametrize(("name", "kv_role", "lookup"), [("prefill-0", "kv_producer", "0"), ("decode-0", "kv_consumer", "1")])
def test_store_kv_transfer_config_is_the_guides_multiconnector(store, name, kv_role, lookup):
    inst = by_name(store)[name]
    ktc = argv_ktc(inst)
    # S lines 204-234: MultiConnector [MooncakeConnectorV1 (P->D), AscendStoreConnector (the pool)].
    assert (ktc["kv_connector"], ktc["kv_role"]) == ("MultiConnector", kv_role)
    p2p, pool = ktc["kv_connector_extra_config"]["connectors"]
    assert (p2p["kv_connector"], p2p["kv_role"], p2p["kv_port"]) == ("MooncakeConnectorV1", kv_role, str(inst["kv_port"]))
    assert p2p["kv_connector_extra_config"]["prefill"] == {"dp_size": 1, "tp_size": 8}  # S lines 153-155, 214-221
    assert p2p["kv_connector_extra_config"]["decode"] == {"dp_size": 1, "tp_size": 8}
    # S lines 164-172 and 225-230: backend mooncake, lookup_rpc_port "0" on the prefill, "1" on the decode.
    assert pool == {"kv_connector": "AscendStoreConnector", "kv_role": kv_role,
                    "kv_connector_extra_config": {"backend": "mooncake", "lookup_rpc_port": lookup}}
    assert inst["lookup_rpc_port"] == int(lookup)
    # S line 22: with MultiConnector the policy goes on the top-level config, not the children.
    assert ktc["kv_load_failure_policy"] == "recompute" and "kv_load_failure_policy" not in p2p


@pytest.mark.parametrize("name", ["prefill-0", "decode-0"])
def test_store_env_and_mooncake_json_are_the_guides(store, name):
    inst = by_name(store)[name]
    env = inst["env"]
    assert env["PYTHONHASHSEED"] == "0"  # S lines 39-43, 159
    assert env["HCCL_INTRA_ROCE_ENABLE"] == "1"  # S lines 180-186 (A2 branch), S §5.1 A2 row
    assert env["HCCL_IF_IP"] == inst["address"] and env["HCCL_SOCKET_IFNAME"] == "eth0"  # S lines 182-185
    assert "ASCEND_ENABLE_USE_FABRIC_MEM" not in env  # the A3 HCCS branch only (S lines 188-190)
    path = env["MOONCAKE_CONFIG_PATH"]  # S line 160
    doc = json.loads(inst["files"][path])
    # S lines 88-100: P2PHANDSHAKE, protocol ascend, empty device name, the master's address, 1GB.
    assert doc == {"metadata_server": "P2PHANDSHAKE", "protocol": "ascend", "device_name": "",
                   "master_server_address": "192.0.2.11:50088", "global_segment_size": "1GB"}


def test_store_master_is_planned_with_the_guides_flags(store):
    master = store["mooncake"]["master"]
    assert (master["host"], master["port"]) == ("a2-p1", 50088)  # S line 121: --port 50088
    # S line 121 runs --default_kv_lease_ttl 11000, and S line 128 says to keep it above
    # ASCEND_CONNECT_TIMEOUT and ASCEND_TRANSFER_TIMEOUT; with the defaults vllm-ascend derives a
    # 33064 ms transfer timeout, so the plan raises the TTL to the next second above it.
    # Beyond the guide: the master listens on its host's address (its default is every interface).
    assert master["args"] == ["--rpc_address=192.0.2.11", "--metrics_host=192.0.2.11", "--metrics_port=9003",
                              "--eviction_high_watermark_ratio=0.9", "--eviction_ratio=0.1",
                              "--default_kv_lease_ttl=34000"]
    row = next(r for r in store["timeouts"] if r["name"] == "mooncake_master default_kv_lease_ttl")
    assert (row["value"], row["source"]) == (34000, "derived from ASCEND_*_TIMEOUT")
    assert store["hosts"]["a2-p1"]["hugepages"] == 200000  # S line 181: echo 200000 > nr_hugepages
    assert "hugepages" not in store["hosts"]["pd-proxy"]
    assert store["proxy"]["protocol"] == "mooncake_v1"  # S lines 273-282: the P-first example proxy


# ------------------------------------------------------------------------------ refusals


def _refused(inventory, **hostvars):
    inv = copy.deepcopy(inventory)
    for host, values in hostvars.items():
        inv["hostvars"][host].update(values)
    with pytest.raises(PlanError) as err:
        build_plan(inv)
    return str(err.value)


def test_store_refuses_a_per_host_hash_seed_mismatch(store_inventory):
    msg = _refused(store_inventory, **{"a2-d1": {"pd_python_hash_seed": 7}})
    assert (
        "pd_python_hash_seed differs between hosts (a2-d1: 7, a2-p1: 0): the KV pool finds blocks by hash, so "
        "PYTHONHASHSEED must be equal on every node; set one pd_python_hash_seed in group_vars/all.yml"
    ) in msg.splitlines()


def test_store_needs_a_master(store_inventory):
    inv = copy.deepcopy(store_inventory)
    inv["groups"]["mooncake_master"] = []
    with pytest.raises(PlanError) as err:
        build_plan(inv)
    assert "connector ascend_store needs a Mooncake master: list one host under [mooncake_master]" in str(err.value)


def test_store_refuses_a_lease_shorter_than_a_transfer(store_inventory):
    msg = _refused(store_inventory, **{"a2-p1": {"pd_mooncake_master_lease_ttl": 11000}})
    assert (
        "host a2-p1: pd_mooncake_master_lease_ttl=11000 ms is not above ASCEND_CONNECT_TIMEOUT=10000 ms "
        "(default (pd_env)) and ASCEND_TRANSFER_TIMEOUT=33064 ms (derived from HCCL_RDMA_*) of prefill-0: the pool "
        "may drop KV a transfer still reads; set pd_mooncake_master_lease_ttl=34000 or lower the ASCEND_*_TIMEOUT"
    ) in msg.splitlines()


def test_store_accepts_a_lease_above_the_timeouts(store_inventory):
    inv = copy.deepcopy(store_inventory)
    inv["hostvars"]["a2-p1"]["pd_mooncake_master_lease_ttl"] = 60000
    master = build_plan(inv)["mooncake"]["master"]
    assert master["args"][-1] == "--default_kv_lease_ttl=60000"


@pytest.mark.parametrize(
    ("var", "value", "line"),
    [
        ("pd_kv_load_failure_policy", "retry",
         "host a2-p1: pd_kv_load_failure_policy='retry' is not one of recompute, fail (what vLLM does when loading KV fails)"),
        ("pd_mooncake_global_segment_size", "1.5GB",
         "host a2-p1: pd_mooncake_global_segment_size='1.5GB' must be a whole number of GB such as 1GB (Mooncake needs it aligned to 1GB)"),
        ("pd_ascend_env_profile", "max", "host a2-p1: pd_ascend_env_profile='max' is not one of guide, none"),
        ("pd_ascend_generation", "A5",
         "host a2-p1: pd_ascend_generation='A5' is not one of A2, A3 (Atlas 800I/T A2 or A3)"),
    ],
)
def test_store_bad_values_are_one_line(store_inventory, var, value, line):
    assert line in _refused(store_inventory, **{"a2-p1": {var: value}}).splitlines()


def test_store_refuses_pythonhashseed_in_pd_env(store_inventory):
    msg = _refused(store_inventory, **{"a2-p1": {"pd_env": {"PYTHONHASHSEED": "1"}}})
    assert "PYTHONHASHSEED" in msg and "pd_python_hash_seed" in msg


# ------------------------------------------------------------------------------ env defaults


def test_env_defaults_are_overridable_per_role(store_inventory):
    inv = copy.deepcopy(store_inventory)
    inv["hostvars"]["a2-d1"]["pd_decode_env"] = {"HCCL_BUFFSIZE": "1024", "OMP_NUM_THREADS": "4"}
    d = by_name(build_plan(inv))["decode-0"]["env"]
    assert (d["HCCL_BUFFSIZE"], d["OMP_NUM_THREADS"], d["TASK_QUEUE_ENABLE"]) == ("1024", "4", "1")


def test_env_defaults_follow_the_generation(store_inventory):
    """A3 over HCCS: ACL_OP_INIT_MODE and ASCEND_ENABLE_USE_FABRIC_MEM, no RoCE switch, no hugepages
    (S lines 188-190 and §5.1's A3 row)."""
    inv = copy.deepcopy(store_inventory)
    for h in ("a2-p1", "a2-d1"):
        inv["hostvars"][h]["pd_ascend_generation"] = "A3"
    plan = build_plan(inv)
    env = by_name(plan)["prefill-0"]["env"]
    assert (env["ACL_OP_INIT_MODE"], env["ASCEND_ENABLE_USE_FABRIC_MEM"]) == ("1", "1")
    assert "HCCL_INTRA_ROCE_ENABLE" not in env
    assert "hugepages" not in plan["hosts"]["a2-p1"]


def test_env_profile_none_leaves_the_guide_out(layerwise):
    inv = load_inventory("ascend-layerwise")
    for hv in inv["hostvars"].values():
        hv["pd_ascend_env_profile"] = "none"
    env = by_name(build_plan(inv))["prefill-0"]["env"]
    guide_only = set(GUIDE_ENV) - {"GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"}  # pd_nic_name's
    assert not guide_only & set(env)
    assert "HCCL_BUFFSIZE" not in env


def test_generation_comes_from_npu_topology_facts():
    inv = load_inventory("ascend-store")
    for h in ("a2-p1", "a2-d1"):
        del inv["hostvars"][h]["pd_ascend_generation"]
    inv["facts"] = {h: {"product": "A3"} for h in ("a2-p1", "a2-d1")}
    env = by_name(build_plan(inv))["decode-0"]["env"]
    assert env["ASCEND_ENABLE_USE_FABRIC_MEM"] == "1"


def test_store_master_on_its_own_host_gets_mooncake(store_inventory):
    """A [mooncake_master] host without engines is in mooncake.hosts: the role installs the wheel
    (mooncake_master ships in it) and starts the master there."""
    inv = copy.deepcopy(store_inventory)
    inv["groups"]["mooncake_master"] = ["pd-proxy"]
    plan = build_plan(inv)
    assert plan["mooncake"]["master"]["host"] == "pd-proxy"
    assert plan["mooncake"]["hosts"] == ["a2-d1", "a2-p1", "pd-proxy"]
    assert json.loads(by_name(plan)["prefill-0"]["files"][by_name(plan)["prefill-0"]["env"]["MOONCAKE_CONFIG_PATH"]])[
        "master_server_address"] == "192.0.2.30:50088"


def test_layerwise_refuses_several_proxy_workers():
    inv = load_inventory("ascend-layerwise")
    proxy = inv["groups"]["proxy"][0]
    msg = _refused(inv, **{proxy: {"pd_proxy_workers": 2}})
    assert (
        f"host {proxy}: pd_proxy_workers=2 with pd_connector=mooncake_layerwise: the layerwise metaserver keeps each "
        "request in the worker that took it; set pd_proxy_workers: 1 (run more proxy hosts for more capacity)"
    ) in msg.splitlines()
    # One worker (the default) plans.
    inv["hostvars"][proxy]["pd_proxy_workers"] = 1
    assert build_plan(inv)["proxy"]["protocol"] == "mooncake_layerwise"
