"""Property-based tests: for random valid inventories the plan's invariants hold, and each
class of broken inventory raises its specific message."""

from __future__ import annotations

import copy

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@st.composite
def valid_inventory(draw, connector=None):
    """Random ascend/cuda/cpu clusters; hosts may carry both roles; devices always suffice."""
    connector = connector or draw(st.sampled_from(["mooncake", "ucm", "shared_storage", "nixl"]))
    platform = {"mooncake": "ascend", "nixl": "cuda", "shared_storage": "cpu"}.get(connector)
    n_hosts = draw(st.integers(1, 4))
    hosts = [f"h{i}" for i in range(n_hosts)]
    prefill = draw(st.lists(st.sampled_from(hosts), min_size=1, max_size=n_hosts, unique=True))
    decode = draw(st.lists(st.sampled_from(hosts), min_size=1, max_size=n_hosts, unique=True))
    proxy = draw(st.sampled_from(hosts))
    p_tp = draw(st.sampled_from([1, 2, 4]))
    d_tp = draw(st.sampled_from([t for t in (1, 2, 4) if t <= p_tp]))
    p_dp, d_dp = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    hostvars = {}
    for h in hosts:
        plat = platform or draw(st.sampled_from(["ascend", "cuda"]))  # ucm may mix platforms
        count = draw(st.sampled_from([8, 16])) if plat != "cpu" else 0
        hv = {
            "ansible_host": f"10.0.0.{hosts.index(h) + 1}",
            "pd_platform": plat,
            "pd_connector": connector,
            "pd_model": "/models/m",
            "pd_prefill_tp": p_tp,
            "pd_decode_tp": d_tp,
            "pd_prefill_dp": p_dp,
            "pd_decode_dp": d_dp,
            "pd_devices_per_host": count,
            "pd_ucm_storage_backends": "/mnt/kv",
            "pd_dtype": "bfloat16",
        }
        n_p = draw(st.integers(1, 3)) if h in prefill else 0
        n_d = draw(st.integers(1, 3)) if h in decode else 0
        if plat != "cpu":
            assume(n_p * p_tp * p_dp + n_d * d_tp * d_dp <= count)
        if n_p:
            hv["pd_prefill_instances_per_host"] = n_p
        if n_d:
            hv["pd_decode_instances_per_host"] = n_d
        hostvars[h] = hv
    return {"groups": {"prefill": prefill, "decode": decode, "proxy": [proxy]}, "hostvars": hostvars}


def binds(plan, host):
    return [p for p in plan["hosts"][host]["ports"] if p["kind"] == "bind"]


@SETTINGS
@given(valid_inventory())
def test_invariants(inv):
    plan = build_plan(inv)
    instances = plan["instances"]
    # Unique names and engine ids; prefill engine ids first.
    assert len({i["name"] for i in instances}) == len(instances)
    ids = [i["engine_id"] for i in instances]
    assert len(set(ids)) == len(ids)
    roles = [i["role"] for i in instances]
    assert roles == sorted(roles, key=lambda r: r != "prefill")
    assert ids == [str(n) for n in range(len(ids))]
    for host in plan["hosts"]:
        mine = [i for i in instances if i["host"] == host]
        devs = [d for i in mine for d in i["devices"]]
        assert len(devs) == len(set(devs)), f"device overlap on {host}"
        ports = binds(plan, host)
        for a in range(len(ports)):
            for b in range(a + 1, len(ports)):
                x, y = ports[a], ports[b]
                assert x["end"] < y["start"] or y["end"] < x["start"], f"port overlap on {host}: {x} {y}"
    for i in instances:
        if i["platform"] == "cpu":
            assert i["devices"] == []
        else:
            assert len(i["devices"]) == i["tensor_parallel_size"] * i["data_parallel_size"]
            assert i["env"][i["visible_devices_env"]] == ",".join(map(str, i["devices"]))
        assert str(i["http_port"]) in i["argv"]
        assert i["kv_transfer_config"]["kv_role"] == i["kv_role"]
    if plan["connector"] in ("mooncake", "nixl"):
        p_tp = min(i["tensor_parallel_size"] for i in instances if i["role"] == "prefill")
        d_tp = max(i["tensor_parallel_size"] for i in instances if i["role"] == "decode")
        assert p_tp >= d_tp
    # Auto-assigned ports never land in a randomly used range: no port warnings.
    assert not [w for w in plan["warnings"] if "range" in w]
    # The proxy knows every instance, by role, at its http port.
    for role in ("prefill", "decode"):
        assert [(b["name"], b["port"]) for b in plan["proxy"][role]] == [
            (i["name"], i["http_port"]) for i in instances if i["role"] == role
        ]


def broken(fragment, mutate):
    @SETTINGS
    @given(valid_inventory(connector="mooncake"), st.data())
    def check(inv, data):
        inv = copy.deepcopy(inv)
        assume(mutate(inv, data) is not False)
        try:
            build_plan(inv)
        except PlanError as exc:
            assert any(fragment in p for p in exc.problems), exc.problems
        else:
            raise AssertionError(f"no PlanError, expected {fragment!r}")

    return check


def _pd_hosts(inv):
    return set(inv["groups"]["prefill"]) | set(inv["groups"]["decode"])


def _shared_host(inv):
    both = [h for h in inv["groups"]["prefill"] if h in inv["groups"]["decode"]]
    return both[0] if both else None


def _tp_inversion(inv, data):
    p = max(hv["pd_prefill_tp"] for hv in inv["hostvars"].values())
    if p >= 8:
        return False
    for hv in inv["hostvars"].values():
        hv["pd_decode_tp"] = p * 2
        hv["pd_devices_per_host"] = 64
        hv["pd_adxl_ports_per_device"] = 100


def _device_overlap(inv, data):
    h = _shared_host(inv)
    if h is None:
        return False
    hv = inv["hostvars"][h]
    n = hv["pd_prefill_tp"] * hv["pd_prefill_dp"]
    hv["pd_prefill_devices"] = [list(range(n))]
    hv["pd_decode_devices"] = [list(range(n - 1, n - 1 + hv["pd_decode_tp"] * hv["pd_decode_dp"]))]
    hv.pop("pd_prefill_instances_per_host"), hv.pop("pd_decode_instances_per_host")


def _device_beyond(inv, data):
    h = data.draw(st.sampled_from(inv["groups"]["decode"]))
    hv = inv["hostvars"][h]
    n = hv["pd_decode_tp"] * hv["pd_decode_dp"]
    hv["pd_decode_devices"] = [list(range(hv["pd_devices_per_host"] - n + 1, hv["pd_devices_per_host"] + 1))]
    hv.pop("pd_decode_instances_per_host")
    hv.pop("pd_prefill_instances_per_host", None)


def _port_clash(inv, data):
    h = _shared_host(inv)
    if h is None:
        return False
    inv["hostvars"][h]["pd_decode_http_port_base"] = 8100


def _duplicate_engine(inv, data):
    h = data.draw(st.sampled_from(inv["groups"]["decode"]))
    inv["hostvars"][h]["pd_decode_engine_ids"] = ["0"] * 3


def _empty_group(inv, data):
    inv["groups"][data.draw(st.sampled_from(["prefill", "decode", "proxy"]))] = []


def _mixed_dtype(inv, data):
    h = data.draw(st.sampled_from(inv["groups"]["decode"]))
    inv["hostvars"][h]["pd_dtype"] = "float16"
    if all(inv["hostvars"][x]["pd_dtype"] == "float16" for x in _pd_hosts(inv)):
        return False


def _mixed_block(inv, data):
    h = data.draw(st.sampled_from(inv["groups"]["prefill"]))
    inv["hostvars"][h]["pd_block_size"] = 64
    if all(inv["hostvars"][x].get("pd_block_size") == 64 for x in _pd_hosts(inv)):
        return False


def _hetero_p2p(inv, data):
    h = data.draw(st.sampled_from(inv["groups"]["decode"]))
    if all(x == h for x in inv["groups"]["prefill"]):
        return False
    inv["hostvars"][h]["pd_platform"] = "cuda"
    inv["hostvars"][h]["pd_connector"] = "mooncake"


def _unknown_connector(inv, data):
    h = data.draw(st.sampled_from(sorted(inv["hostvars"])))
    inv["hostvars"][h]["pd_connector"] = data.draw(st.sampled_from(["p2p", "lmcache", "Mooncake"]))
    if h not in inv["groups"]["prefill"] + inv["groups"]["decode"]:
        return False


def _unknown_platform(inv, data):
    h = data.draw(st.sampled_from(inv["groups"]["prefill"]))
    inv["hostvars"][h]["pd_platform"] = data.draw(st.sampled_from(["rocm", "npu", "gpu"]))


test_tp_inversion = broken("must be >= the decode tp", _tp_inversion)
test_device_overlap = broken("is given to both", _device_overlap)
test_device_beyond_host = broken("but the host has", _device_beyond)
test_port_clash = broken("port clash", _port_clash)
test_duplicate_engine_id = broken("duplicate engine id", _duplicate_engine)
test_empty_group = broken("is empty", _empty_group)
test_mixed_dtype = broken("pd_dtype differs", _mixed_dtype)
test_mixed_block_size = broken("pd_block_size differs", _mixed_block)
test_heterogeneous_p2p = broken("mixed with the P2P connector", _hetero_p2p)
test_unknown_connector = broken("is not one of mooncake, mooncake_layerwise, ascend_store, ucm, shared_storage, nixl", _unknown_connector)
test_unknown_platform = broken("is not one of ascend, cuda, cpu", _unknown_platform)


@SETTINGS
@given(
    valid_inventory(connector="mooncake"),
    st.sampled_from(["pd_prefil_tp", "pd_decode_tpp", "pd_modle", "pd_proxy_routin"]),
)
def test_typo_warns(inv, typo):
    h = inv["groups"]["prefill"][0]
    inv["hostvars"][h][typo] = 1
    plan = build_plan(inv)
    assert any(f"unknown variable {typo} ignored; did you mean" in w for w in plan["warnings"])
