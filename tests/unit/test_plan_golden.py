"""Golden tests: the plan for the seed scenarios reproduces the seeds' launch commands.

The seed scripts (tests/unit/fixtures/plan_seeds/) are parsed, not restated: every exported
variable, every `vllm serve` flag (kv-transfer JSON compared as JSON) and the proxy's backend
lists must come out of the plan for the shipped inventories.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import build_plan
from plan_support import flags, load_inventory, parse_script


def by_name(plan):
    return {i["name"]: i for i in plan["instances"]}


def proxy_lists(plan):
    p = plan["proxy"]
    return (
        [b["address"] for b in p["prefill"]],
        [b["port"] for b in p["prefill"]],
        [b["address"] for b in p["decode"]],
        [b["port"] for b in p["decode"]],
        p["port"],
    )


@pytest.fixture(scope="module")
def ascend_1p1d():
    return build_plan(load_inventory("ascend-1p1d"))


@pytest.mark.parametrize(
    ("instance", "script"), [("prefill-0", "mooncake_run_prefill.sh"), ("decode-0", "mooncake_run_decode.sh")]
)
def test_ascend_1p1d_reproduces_seed_scripts(ascend_1p1d, instance, script):
    env, argv = parse_script(script)
    inst = by_name(ascend_1p1d)[instance]
    assert inst["env"] == env
    assert flags(inst["argv"]) == seed_flags_with_stable_engine_id(flags(argv), inst)


def seed_flags_with_stable_engine_id(seed, inst):
    # Deliberate deviation: the seed numbers its two engines by hand ("0" prefill, "1" decode);
    # the plan's engine id is a function of (host, role, index on host) so that scaling never
    # changes a running instance's kv_transfer_config (pd_<role>_engine_ids still pins any id).
    # Every other kv-transfer field, kv_rank included, is the seed's.
    ktc = dict(seed["--kv-transfer-config"])
    assert ktc["engine_id"] == {"prefill": "0", "decode": "1"}[inst["role"]]
    ktc["engine_id"] = "{}-{}-0".format(inst["role"], inst["host"])
    return {**seed, "--kv-transfer-config": ktc}
    assert inst["argv"][:2] == ["vllm", "serve"]


def test_ascend_1p1d_layout_matches_seed(ascend_1p1d):
    p, d = by_name(ascend_1p1d)["prefill-0"], by_name(ascend_1p1d)["decode-0"]
    assert (p["devices"], p["http_port"], p["kv_port"], p["engine_id"], p["kv_rank"]) == (
        [0, 1],
        8107,
        20001,
        "prefill-npu-node1-0",
        0,
    )
    assert (d["devices"], d["http_port"], d["kv_port"], d["engine_id"], d["kv_rank"]) == (
        [2, 3],
        8207,
        20002,
        "decode-npu-node1-0",
        1,
    )
    assert p["kv_role"] == "kv_producer" and d["kv_role"] == "kv_consumer"
    # The producer binds kv_port + tp_rank (20001-20002); the consumer's 20002 is not bound,
    # so the seed's overlap is no clash, but kv ports inside the ADXL range warn.
    assert {"start": 20001, "end": 20002, "purpose": "kv side channel", "kind": "bind"} in p["ports"]
    assert not [x for x in d["ports"] if x["purpose"] == "kv side channel"]
    assert any("20001-20002" in w and "ascend direct" in w for w in ascend_1p1d["warnings"])


def test_ascend_1p1d_proxy_matches_seed(ascend_1p1d):
    _, argv = parse_script("mooncake_proxy.sh")
    f = flags(argv)
    assert proxy_lists(ascend_1p1d) == (
        [f["--prefiller-hosts"]],
        [int(f["--prefiller-ports"])],
        [f["--decoder-hosts"]],
        [int(f["--decoder-ports"])],
        int(f["--port"]),
    )
    assert ascend_1p1d["proxy"]["protocol"] == "mooncake_v1"


def test_batch_integration_adds_seed_follow_up_on_prefill_only():
    inv = load_inventory("ascend-1p1d")
    inv["hostvars"]["npu-node1"]["pd_batch_integration"] = True
    plan = build_plan(inv)
    p, d = by_name(plan)["prefill-0"], by_name(plan)["decode-0"]
    env, argv = parse_script("mooncake_run_prefill.sh")
    assert p["env"] == {**env, "BATCH_BY_REQUEST_LENGTH": "true"}
    assert flags(p["argv"]) == {**seed_flags_with_stable_engine_id(flags(argv), p), "--scheduling-policy": "priority"}
    assert p["scheduling_policy"] == "priority" and d["scheduling_policy"] is None
    assert "BATCH_BY_REQUEST_LENGTH" not in d["env"] and "--scheduling-policy" not in d["argv"]
    assert plan["proxy"]["options"]["batch_priority"] is True


def ucm_expected_env(seed_env):
    # Deliberate deviation: UCM needs one PYTHONHASHSEED on every instance (the seed sets it
    # on its XpYd decoders only); docs/plan.md explains.
    return {**seed_env, "PYTHONHASHSEED": "123456"}


def seed_yaml():
    from plan_support import SEEDS

    return yaml.safe_load((SEEDS / "ucm_config_example.yaml").read_text())


def check_ucm_instance(inst, script):
    env, argv = parse_script(script)
    assert inst["env"] == ucm_expected_env(env)
    assert flags(inst["argv"]) == flags(argv)
    path = flags(argv)["--kv-transfer-config"]["kv_connector_extra_config"]["UCM_CONFIG_FILE"]
    assert list(inst["files"]) == [path]
    assert yaml.safe_load(inst["files"][path]) == seed_yaml()


def test_ucm_xpyd_reproduces_seed():
    plan = build_plan(load_inventory("ucm-xpyd"))
    names = by_name(plan)
    for name, script in (
        ("prefill-0", "ucm_xpyd_prefill1.sh"),
        ("prefill-1", "ucm_xpyd_prefill2.sh"),
        ("decode-0", "ucm_xpyd_decode1.sh"),
        ("decode-1", "ucm_xpyd_decode2.sh"),
    ):
        check_ucm_instance(names[name], script)
    _, argv = parse_script("ucm_xpyd_proxy.sh")
    f = flags(argv)
    assert proxy_lists(plan)[1] == [int(x) for x in f["--prefiller-port"]]
    assert proxy_lists(plan)[3] == [int(x) for x in f["--decoder-ports"]]
    assert len(proxy_lists(plan)[0]) == len(f["--prefiller-hosts"])
    assert len(proxy_lists(plan)[2]) == len(f["--decoder-hosts"])
    assert plan["proxy"]["port"] == int(f["--port"]) and plan["proxy"]["protocol"] == "centralized"


def test_ucm_hetero_reproduces_seed():
    plan = build_plan(load_inventory("hetero-ucm"))
    names = by_name(plan)
    check_ucm_instance(names["prefill-0"], "ucm_hetero_prefill.sh")
    check_ucm_instance(names["decode-0"], "ucm_hetero_decode.sh")
    assert names["prefill-0"]["platform"] == "ascend" and names["decode-0"]["platform"] == "cuda"
    _, argv = parse_script("ucm_hetero_proxy.sh")
    f = flags(argv)
    assert proxy_lists(plan) == (
        ["192.0.2.41"],
        [int(f["--prefiller-port"])],
        ["192.0.2.42"],
        [int(f["--decoder-port"])],
        int(f["--port"]),
    )


def test_ucm_1p1d_reproduces_seed():
    # The seed's plain 1P1D: two GPU nodes, one instance each on device 0.
    inv = load_inventory("hetero-ucm")
    inv = copy.deepcopy(inv)
    for hv in inv["hostvars"].values():
        hv["pd_platform"] = "cuda"
        hv.pop("pd_dtype", None)
    plan = build_plan(inv)
    names = by_name(plan)
    check_ucm_instance(names["prefill-0"], "ucm_1p1d_prefill.sh")
    check_ucm_instance(names["decode-0"], "ucm_1p1d_decode.sh")
    _, argv = parse_script("ucm_1p1d_proxy.sh")
    f = flags(argv)
    lists = proxy_lists(plan)
    assert (lists[1], lists[3], lists[4]) == (
        [int(f["--prefiller-port"])],
        [int(f["--decoder-port"])],
        int(f["--port"]),
    )
