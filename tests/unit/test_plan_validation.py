"""Every validation error of the planner: one line, naming the host/group/variable and the fix.

Each case starts from a valid inventory, breaks one thing and checks the specific message;
docs/plan.md lists the same errors.
"""

from __future__ import annotations

import copy

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan


def one_host(**vars_):
    """1P1D on one ascend host with Mooncake (the seed's shape), plus overrides."""
    hv = {
        "ansible_host": "10.0.0.1",
        "pd_platform": "ascend",
        "pd_connector": "mooncake",
        "pd_model": "/m",
        "pd_tp": 2,
    }
    hv.update(vars_)
    return {"groups": {"prefill": ["n1"], "decode": ["n1"], "proxy": ["n1"]}, "hostvars": {"n1": hv}}


def two_hosts(p=None, d=None, common=None):
    base = {"pd_model": "/m", "pd_connector": "ucm", "pd_ucm_storage_backends": "/mnt/kv"}
    base.update(common or {})
    return {
        "groups": {"prefill": ["p1"], "decode": ["d1"], "proxy": ["p1"]},
        "hostvars": {
            "p1": {**base, "ansible_host": "10.0.0.1", "pd_platform": "ascend", **(p or {})},
            "d1": {**base, "ansible_host": "10.0.0.2", "pd_platform": "cuda", **(d or {})},
        },
    }


def problems(inv):
    with pytest.raises(PlanError) as info:
        build_plan(inv)
    exc = info.value
    assert exc.problems, "PlanError without problems"
    for line in exc.problems:
        assert "\n" not in line, f"multi-line problem: {line!r}"
    return exc.problems


def only(inv, fragment):
    found = problems(inv)
    assert any(fragment in p for p in found), f"{fragment!r} not in {found}"
    return found


def test_valid_inventories_plan():
    assert build_plan(one_host())["instances"]
    assert build_plan(two_hosts())["platforms"] == ["ascend", "cuda"]


@pytest.mark.parametrize("group", ["prefill", "decode", "proxy"])
def test_empty_group(group):
    inv = one_host()
    inv["groups"][group] = []
    found = only(inv, f"group {group} is empty")
    assert f"[{group}]" in found[0]


def test_two_proxies_plan_two_full_proxies():
    inv = two_hosts()
    inv["groups"]["proxy"] = ["p1", "d1"]
    plan = build_plan(inv)
    assert [p["host"] for p in plan["proxies"]] == ["p1", "d1"]
    assert plan["proxy"] == plan["proxies"][0]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"pd_platform": "rocm"}, "pd_platform='rocm' is not one of ascend, cuda, cpu"),
        ({"pd_connector": "lmcache"}, "pd_connector='lmcache' is not one of"),
        ({"pd_connector": "nixl"}, "connector nixl does not run on platform ascend"),
        (
            {"pd_platform": "cpu", "pd_connector": "mooncake"},
            "connector mooncake does not run on platform cpu",
        ),
        ({"pd_runtime": "k8s"}, "pd_runtime='k8s' is not one of host, container"),
        ({"pd_model": None}, "pd_model is not set"),
        ({"pd_model": "builtin:gpt-9"}, "unknown builtin model"),
        ({"pd_tp": 0}, "host n1: pd_tp=0 must be an integer >= 1"),
        ({"pd_prefill_tp": "two"}, "pd_prefill_tp='two' must be an integer"),
        (
            {"pd_decode_devices": [[2, 3]], "pd_prefill_devices": "0,1"},
            "pd_prefill_devices must be a list of device lists",
        ),
        ({"pd_prefill_devices": [[0]]}, "pd_prefill_devices[0]=[0] has 1 devices but tp x dp = 2 x 1 = 2"),
        ({"pd_prefill_devices": [[1, 1]]}, "names a device twice"),
        (
            {"pd_prefill_devices": [[0, 1]], "pd_prefill_instances_per_host": 2},
            "disagrees with pd_prefill_devices",
        ),
        ({"pd_decode_devices": [[7, 8]]}, "uses device 8 but the host has 8 devices"),
        (
            {"pd_prefill_devices": [[0, 1]], "pd_decode_devices": [[1, 2]]},
            "device 1 is given to both prefill-0 and decode-0",
        ),
        ({"pd_prefill_instances_per_host": 4}, "needs 2 free devices but only 0 are left"),
        (
            {"pd_prefill_engine_ids": ["0"], "pd_decode_engine_ids": ["0"]},
            "duplicate engine id '0' on prefill-0 and decode-0",
        ),
        ({"pd_decode_engine_ids": "x"}, "pd_decode_engine_ids must list one engine id per decode instance"),
        ({"pd_gpu_memory_utilization": 1.5}, "pd_gpu_memory_utilization=1.5 must be a number in (0, 1]"),
        ({"pd_trust_remote_code": "maybe"}, "pd_trust_remote_code='maybe' must be true or false"),
        ({"pd_env": ["A=1"]}, "pd_env must be a mapping of NAME: value"),
        ({"pd_extra_args": {"a": 1}}, "pd_extra_args must be a list of strings"),
        ({"pd_extra_args": "--x 'unterminated"}, "pd_extra_args cannot be split into arguments"),
        (
            {"pd_decode_tp": 4, "pd_decode_devices": [[2, 3, 4, 5]]},
            "prefill tp 2 (prefill-0 on n1) < decode tp 4 (decode-0 on n1) with connector mooncake",
        ),
        ({"pd_decode_http_port_base": 8100}, "port clash: prefill-0 http 8100 overlaps decode-0 http 8100"),
        (
            {"pd_proxy_port": 8200},
            "port clash: decode-0 http 8200 overlaps proxy http 8200: change pd_proxy_port",
        ),
        ({"pd_prefill_kv_port_base": 65535}, "leaves 1..65535"),
        ({"pd_http_port_base": 70000}, "pd_http_port_base=70000 must be an integer in 1..65535"),
    ],
)
def test_one_host_errors(override, fragment):
    only(one_host(**override), fragment)


def test_kv_range_clash_with_dp_rpc_port():
    # Producer binds 30000-30001 (tp 2); a dp>1 decode's rpc port 30001 lands inside it.
    inv = one_host(
        pd_prefill_kv_port_base=30000, pd_decode_dp=2, pd_decode_tp=1, pd_decode_dp_rpc_port_base=30001
    )
    only(inv, "prefill-0 kv side channel 30000-30001 overlaps decode-0 data parallel rpc 30001")


@pytest.mark.parametrize(
    ("p", "d", "common", "fragment"),
    [
        ({"pd_connector": "mooncake"}, {"pd_connector": "ucm"}, None, "pd_connector differs between hosts"),
        (None, None, {"pd_connector": "mooncake"}, "mixed with the P2P connector mooncake"),
        ({"pd_dtype": "float16"}, {"pd_dtype": "bfloat16"}, None, "pd_dtype differs between instances"),
        ({"pd_block_size": 64}, None, None, "pd_block_size differs between instances"),
        ({"pd_model": "/other"}, None, None, "pd_model differs between hosts"),
        ({"pd_served_model_name": "a"}, {"pd_served_model_name": "b"}, None, "pd_served_model_name differs"),
        (
            {"pd_ucm_storage_backends": None},
            None,
            {"pd_ucm_storage_backends": None},
            "pd_ucm_storage_backends is not set",
        ),
        (None, None, {"pd_ucm_kv_role": "sender"}, "pd_ucm_kv_role='sender' must be kv_both"),
    ],
)
def test_two_host_errors(p, d, common, fragment):
    only(two_hosts(p, d, common), fragment)


def test_mixed_platforms_with_p2p_connector():
    inv = two_hosts(common={"pd_connector": "mooncake"})
    inv["hostvars"]["d1"]["pd_platform"] = "ascend"
    assert build_plan(inv)["connector"] == "mooncake"
    inv["hostvars"]["d1"]["pd_platform"] = "cuda"
    inv["hostvars"]["p1"]["pd_platform"] = "cuda"
    inv["hostvars"]["d1"]["pd_connector"] = inv["hostvars"]["p1"]["pd_connector"] = "nixl"
    inv["hostvars"]["p1"]["pd_platform"] = "ascend"
    found = problems(inv)
    assert any("connector nixl does not run on platform ascend" in p for p in found)
    inv["hostvars"]["p1"]["pd_connector"] = inv["hostvars"]["d1"]["pd_connector"] = "mooncake"
    only(inv, "platforms ascend+cuda are mixed with the P2P connector mooncake")


def test_mooncake_needs_one_layout_per_side():
    inv = {
        "groups": {"prefill": ["p1", "p2"], "decode": ["d1"], "proxy": ["d1"]},
        "hostvars": {h: {"pd_platform": "ascend", "pd_model": "/m", "pd_tp": 2} for h in ("p1", "p2", "d1")},
    }
    inv["hostvars"]["p2"]["pd_tp"] = 4
    only(inv, "prefill instances use different tp/dp (tp2 dp1, tp4 dp1)")


def test_shared_storage_path_rules():
    base = {"pd_platform": "cpu", "pd_model": "builtin:tiny-llama"}
    inv = {
        "groups": {"prefill": ["a"], "decode": ["b"], "proxy": ["a"]},
        "hostvars": {"a": dict(base), "b": dict(base)},
    }
    plan = build_plan(inv)
    assert any("shared filesystem" in w for w in plan["warnings"])
    inv["hostvars"]["a"]["pd_kv_shared_path"] = "kv"
    inv["hostvars"]["b"]["pd_kv_shared_path"] = "kv"
    only(copy.deepcopy(inv), "host a: pd_kv_shared_path='kv' must be an absolute directory")
    inv["hostvars"]["b"]["pd_kv_shared_path"] = "/x"
    only(inv, "host b: pd_kv_shared_path differs from host a")


def test_ucm_store_directory_is_one_absolute_path():
    # A decode that reads another directory than its prefill wrote recomputes every prompt, silently.
    assert build_plan(two_hosts())["storage"]["path"] == "/mnt/kv"
    assert problems(two_hosts(d={"pd_ucm_storage_backends": "/mnt/other"})) == [
        "host d1: pd_ucm_storage_backends=/mnt/other differs from host p1 (/mnt/kv): every prefill and decode "
        "must use one shared store directory; set one pd_ucm_storage_backends"
    ]
    assert problems(two_hosts(common={"pd_ucm_storage_backends": "kv"})) == [
        "hosts p1, d1: pd_ucm_storage_backends='kv' must be an absolute directory (the shared store every prefill "
        "and decode host mounts)"
    ]


def test_cpu_rejects_devices():
    inv = one_host(pd_platform="cpu", pd_connector="shared_storage", pd_prefill_devices=[[0, 1]])
    only(inv, "pd_prefill_devices is set but platform cpu has no devices")


NPU_FACTS = {
    "chips": [
        {
            "logic_id": i,
            "phy_id": i,
            "health": "OK" if i != 2 else "Critical",
            "busy": i == 3,
            "processes": [1] if i == 3 else [],
            "device_ip": f"10.20.0.{i + 1}",
        }
        for i in range(8)
    ]
}


def test_npu_facts_decide_free_devices():
    inv = one_host()
    inv["facts"] = {"n1": NPU_FACTS}
    plan = build_plan(inv)
    devs = {i["name"]: i["devices"] for i in plan["instances"]}
    # Device 2 is unhealthy and 3 busy: auto assignment skips both.
    assert devs == {"prefill-0": [0, 1], "decode-0": [4, 5]}


@pytest.mark.parametrize(
    ("devices", "fragment"),
    [
        ([[2, 4]], "uses device 2 which is unhealthy (npu-smi health Critical)"),
        ([[3, 4]], "uses device 3 which is busy"),
    ],
)
def test_npu_facts_refuse_bad_devices(devices, fragment):
    inv = one_host(pd_decode_devices=devices)
    inv["facts"] = {"n1": NPU_FACTS}
    only(inv, fragment)


def test_npu_facts_missing_device():
    inv = one_host(pd_decode_devices=[[4, 5]])
    inv["facts"] = {"n1": {"chips": [c for c in NPU_FACTS["chips"] if c["logic_id"] != 5]}}
    only(inv, "uses device 5 which npu_topology did not report")


def test_all_problems_reported_together():
    inv = one_host(pd_tp=0, pd_runtime="k8s", pd_gpu_memory_utilization=7)
    found = problems(inv)
    assert len(found) >= 3


def test_typo_warnings():
    plan = build_plan(one_host(pd_prefil_tp=4, pd_whatever=1))
    assert "host n1: unknown variable pd_prefil_tp ignored; did you mean pd_prefill_tp?" in plan["warnings"]
    assert any("unknown variable pd_whatever ignored" in w for w in plan["warnings"])
    # The typo was not applied.
    assert {i["tensor_parallel_size"] for i in plan["instances"]} == {2}


def test_explicit_port_inside_random_ranges_warns_not_fails():
    plan = build_plan(one_host(pd_prefill_kv_port_base=16000))
    assert any(
        "16000-16001 lies inside the mooncake transfer engine rpc range 15000-17000" in w
        for w in plan["warnings"]
    )


def test_ini_group_vars_strings_are_understood():
    # INI [group:vars] values are strings: numbers, booleans, lists and mappings still work.
    inv = one_host(
        pd_tp="2",
        pd_prefill_devices="[[4, 5]]",
        pd_decode_devices="[[6, 7]]",
        pd_enforce_eager="true",
        pd_env="{'A': 1}",
        pd_prefill_http_port_base="9001",
        pd_max_model_len="4096",
    )
    plan = build_plan(inv)
    p = plan["instances"][0]
    assert (p["devices"], p["http_port"], p["env"]["A"]) == ([4, 5], 9001, "1")
    assert "--enforce-eager" in p["argv"] and p["argv"][p["argv"].index("--max-model-len") + 1] == "4096"


def test_empty_group_suggests_a_misspelt_one():
    inv = one_host()
    inv["groups"]["prefil"] = inv["groups"].pop("prefill")
    inv["all_groups"] = ["all", "prefil", "decode", "proxy", "ungrouped"]
    only(
        inv,
        "group prefill is empty: add at least one host under [prefill] in the inventory "
        "(the inventory has a group [prefil]: rename it)",
    )
