"""One GPU for the prefill and the decode (inventories/cuda-local): the planner gives a device
to several instances only when each one sets its memory fraction and the fractions fit."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan
from plan_support import load_inventory


def one_gpu(**vars_):
    hv = {
        "ansible_host": "127.0.0.1",
        "pd_platform": "cuda",
        "pd_model": "/m",
        "pd_devices_per_host": 1,
        "pd_prefill_devices": [[0]],
        "pd_decode_devices": [[0]],
        "pd_gpu_memory_utilization": 0.15,
    }
    hv.update(vars_)
    return {"groups": {"prefill": ["g"], "decode": ["g"], "proxy": ["g"]}, "hostvars": {"g": hv}}


def by_role(plan):
    return {i["role"]: i for i in plan["instances"]}


def test_shared_gpu_plans_both_on_device_0_with_their_own_side_channel():
    inst = by_role(build_plan(one_gpu()))
    assert inst["prefill"]["devices"] == inst["decode"]["devices"] == [0]
    assert inst["prefill"]["env"]["CUDA_VISIBLE_DEVICES"] == inst["decode"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    ports = {r: i["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] for r, i in inst.items()}
    assert ports["prefill"] != ports["decode"]
    for i in inst.values():
        argv = i["argv"]
        assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.15"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"pd_prefill_gpu_memory_utilization": 0.6, "pd_decode_gpu_memory_utilization": 0.5}, "sum 1.1"),
        ({"pd_gpu_memory_utilization": None, "pd_prefill_gpu_memory_utilization": 0.3}, "decode sets none"),
    ],
)
def test_shared_gpu_refused_unless_the_memory_fractions_fit(overrides, why):
    inv = one_gpu(**overrides)
    if inv["hostvars"]["g"]["pd_gpu_memory_utilization"] is None:
        del inv["hostvars"]["g"]["pd_gpu_memory_utilization"]
    with pytest.raises(PlanError) as info:
        build_plan(inv)
    msg = [p for p in info.value.problems if "is given to both" in p]
    assert msg, (why, info.value.problems)
    assert "pd_prefill_gpu_memory_utilization and pd_decode_gpu_memory_utilization summing to at most 1" in msg[0]


def test_shared_gpu_split_exactly_to_one_is_accepted():
    inst = by_role(build_plan(one_gpu(pd_prefill_gpu_memory_utilization=0.5, pd_decode_gpu_memory_utilization=0.5)))
    assert inst["prefill"]["devices"] == inst["decode"]["devices"] == [0]


def test_shipped_cuda_local_inventory_nixl_and_mooncake_variant():
    inv = load_inventory("cuda-local")
    plan = build_plan(copy.deepcopy(inv))
    inst = by_role(plan)
    assert plan["proxy"]["protocol"] == "nixl"
    assert inst["prefill"]["kv_transfer_config"]["kv_connector"] == "NixlConnector"
    assert inst["prefill"]["devices"] == inst["decode"]["devices"] == [0]
    assert inst["prefill"]["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] != inst["decode"]["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"]
    assert plan["model"]["builtin"] == "tiny-llama"
    for hv in inv["hostvars"].values():
        hv["pd_connector"] = "mooncake"
    mc = build_plan(inv)
    assert mc["proxy"]["protocol"] == "mooncake"
    assert by_role(mc)["prefill"]["kv_transfer_config"]["kv_connector"] == "MooncakeConnector"
    assert "VLLM_MOONCAKE_BOOTSTRAP_PORT" in by_role(mc)["prefill"]["env"]
