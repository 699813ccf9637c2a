"""Several [proxy] hosts and the keepalived virtual IP in front of them (pd_plan_ha).

Every proxy is a full proxy with the same backends; pd_proxy_vip is checked before any host is
touched, one line per mistake; the plan says what a single proxy risks.
"""

from __future__ import annotations

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan, render_table

SINGLE = "one proxy host"


def cluster(proxies=("px1", "px2"), **group_vars):
    """2P2D on cpu hosts 10.0.0.1-4 and the given proxy hosts 10.0.0.11.. (shared storage)."""
    base = {
        "pd_platform": "cpu",
        "pd_connector": "shared_storage",
        "pd_model": "builtin:tiny-llama",
        "pd_bind_host": "0.0.0.0",
        "pd_proxy_bind_host": "0.0.0.0",
    }
    base.update(group_vars)
    engines = {"p1": "10.0.0.1", "p2": "10.0.0.2", "d1": "10.0.0.3", "d2": "10.0.0.4"}
    hostvars = {h: {**base, "ansible_host": a} for h, a in engines.items()}
    for k, h in enumerate(proxies):
        hostvars.setdefault(h, {**base, "ansible_host": f"10.0.0.{11 + k}"})
    return {
        "groups": {"prefill": ["p1", "p2"], "decode": ["d1", "d2"], "proxy": list(proxies)},
        "hostvars": hostvars,
    }


def problems(inv):
    with pytest.raises(PlanError) as info:
        build_plan(inv)
    for line in info.value.problems:
        assert "\n" not in line and "Traceback" not in line
    return info.value.problems


def test_every_proxy_is_a_full_proxy_with_the_same_backends():
    plan = build_plan(cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0"))
    px1, px2 = plan["proxies"]
    assert (px1["host"], px1["address"], px2["host"], px2["address"]) == ("px1", "10.0.0.11", "px2", "10.0.0.12")
    for key in ("prefill", "decode", "port", "protocol", "model", "options"):
        assert px1[key] == px2[key], key
    assert [b["name"] for b in px1["decode"]] == ["decode-0", "decode-1"]
    assert plan["proxy"] == px1
    # Each proxy host owns its listening port in the plan's port table (preflight checks it).
    for h in ("px1", "px2"):
        assert {
            "start": 9090, "end": 9090, "purpose": "proxy http", "kind": "bind",
            "owner": "proxy", "use": "http", "var": "pd_proxy_port",
        } in plan["hosts"][h]["ports"]


def test_vip_section_and_endpoint():
    plan = build_plan(cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0", pd_proxy_vip_prefix="24"))
    vip = plan["proxy_vip"]
    assert (vip["address"], vip["prefix"], vip["interface"], vip["router_id"], vip["unicast"]) == (
        "10.0.0.100", 24, "eth0", 51, True,
    )
    assert vip["peers"] == [{"host": "px1", "address": "10.0.0.11"}, {"host": "px2", "address": "10.0.0.12"}]
    assert plan["endpoint"] == {"address": "10.0.0.100", "port": 9090, "vip": True, "url": "http://10.0.0.100:9090"}
    assert plan["proxy_risk"] is None
    table = "\n".join(render_table(plan))
    assert "10.0.0.100/24 on eth0" in table and SINGLE not in table


def test_vip_interface_defaults_to_nic_name():
    plan = build_plan(cluster(pd_proxy_vip="10.0.0.100", pd_nic_name="ens3"))
    assert plan["proxy_vip"]["interface"] == "ens3"


def test_single_proxy_plan_says_what_it_risks():
    plan = build_plan(cluster(proxies=("px1",)))
    assert plan["proxy_vip"] is None
    assert plan["endpoint"] == {"address": "10.0.0.11", "port": 9090, "vip": False, "url": "http://10.0.0.11:9090"}
    assert plan["proxy_risk"].startswith(SINGLE)
    assert any(line.startswith("NOTE: " + SINGLE) for line in render_table(plan))


def test_several_proxies_without_vip_name_the_client_side_failover():
    plan = build_plan(cluster())
    assert plan["proxy_vip"] is None and "clients must know them all" in plan["proxy_risk"]


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"pd_proxy_vip": "10.0.0.300"}, "pd_proxy_vip='10.0.0.300' is not an IP address: set a free address of the proxies' network"),
        ({"pd_proxy_vip": "vip.example"}, "pd_proxy_vip='vip.example' is not an IP address"),
        ({"pd_proxy_vip": "10.0.0.100/24"}, "pd_proxy_vip='10.0.0.100/24' carries a prefix: give the address alone and the prefix in pd_proxy_vip_prefix"),
        ({"pd_proxy_vip": "127.0.0.5"}, "pd_proxy_vip='127.0.0.5' is a loopback, wildcard or multicast address"),
        ({"pd_proxy_vip": "10.0.0.3"}, "pd_proxy_vip=10.0.0.3 is the address of host d1: the virtual IP must be a free address, not one a host already has"),
        ({"pd_proxy_vip": "10.0.0.11"}, "pd_proxy_vip=10.0.0.11 is the address of host px1"),
        ({"pd_proxy_vip_prefix": 33}, "pd_proxy_vip_prefix=33 must be an integer in 1..32 (the prefix length of pd_proxy_vip=10.0.0.100)"),
        ({"pd_proxy_vip_interface": None}, "hosts px1, px2: pd_proxy_vip=10.0.0.100 needs pd_proxy_vip_interface: the network interface of the proxy host that carries the virtual IP (e.g. eth0)"),
        ({"pd_proxy_vip_interface": "eth 0"}, "pd_proxy_vip_interface='eth 0' is not a network interface name"),
        ({"pd_proxy_vrrp_router_id": 256}, "pd_proxy_vrrp_router_id=256 must be an integer in 1..255 (the VRRP virtual router id, unique on the network)"),
        ({"pd_proxy_vrrp_unicast": "maybe"}, "pd_proxy_vrrp_unicast='maybe' must be true or false"),
        # Digits that are not ASCII pass str.isdigit() and make int() raise: a line, not a crash.
        ({"pd_proxy_vip_prefix": "\u00b9"}, "proxy hosts px1, px2: pd_proxy_vip_prefix='\u00b9' must be an integer in 1..32"),
        ({"pd_proxy_vrrp_router_id": "\u0663"}, "proxy hosts px1, px2: pd_proxy_vrrp_router_id='\u0663' must be an integer in 1..255"),
        ({"pd_proxy_bind_host": "10.0.0.11"}, "the proxy listens on 10.0.0.11 only, so it cannot answer on pd_proxy_vip=10.0.0.100: set pd_proxy_bind_host=0.0.0.0 (or ::) on the proxy hosts"),
    ],
)
def test_vip_mistakes_are_one_line_each(overrides, line):
    group = {"pd_proxy_vip": "10.0.0.100", "pd_proxy_vip_interface": "eth0"}
    group.update(overrides)
    found = problems(cluster(**{k: v for k, v in group.items() if v is not None}))
    assert any(line in p for p in found), f"{line!r} not in {found}"


def test_vip_must_be_one_value_and_proxies_one_port():
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0")
    inv["hostvars"]["px2"]["pd_proxy_vip"] = "10.0.0.101"
    assert problems(inv) == [
        "pd_proxy_vip differs between the proxy hosts (px1: 10.0.0.100, px2: 10.0.0.101): set one pd_proxy_vip for group proxy"
    ]
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0")
    inv["hostvars"]["px2"]["pd_proxy_port"] = 9091
    assert any(p.startswith("pd_proxy_port differs between the proxy hosts (px1: 9090, px2: 9091)") for p in problems(inv))


def test_unicast_peers_need_ip_addresses_of_distinct_hosts():
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0")
    inv["hostvars"]["px2"]["ansible_host"] = "proxy-b.lan"
    assert any(
        "host px2: VRRP unicast peers need IP addresses, and proxy-b.lan is a name: set pd_address" in p
        for p in problems(inv)
    )
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0")
    inv["hostvars"]["px2"]["ansible_host"] = "10.0.0.11"
    assert problems(inv) == [
        "hosts px1, px2 (one machine: all are 10.0.0.11): port clash: proxy http 9090 overlaps proxy http 9090: "
        "change pd_proxy_port"
    ]
    # Multicast VRRP needs no peer list, so a name is fine there.
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0", pd_proxy_vrrp_unicast="false")
    inv["hostvars"]["px2"]["ansible_host"] = "proxy-b.lan"
    assert build_plan(inv)["proxy_vip"]["unicast"] is False


@pytest.mark.parametrize(
    ("var", "px1", "px2"),
    [("pd_proxy_vip_prefix", 24, 16), ("pd_proxy_vrrp_router_id", 51, 52), ("pd_proxy_vrrp_unicast", True, False)],
)
def test_group_wide_vrrp_settings_must_agree(var, px1, px2):
    # keepalived runs one VRRP instance for the group: a setting only the first proxy host's value
    # counted for would be silently wrong on the others.
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0")
    inv["hostvars"]["px1"][var] = px1
    inv["hostvars"]["px2"][var] = px2
    assert problems(inv) == [
        f"{var} differs between the proxy hosts (px1: {px1}, px2: {px2}): set one {var} for group proxy"
    ]


def test_each_proxy_host_has_its_own_vip_interface():
    inv = cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0")
    inv["hostvars"]["px2"]["pd_proxy_vip_interface"] = "ens3"
    vip = build_plan(inv)["proxy_vip"]
    assert (vip["interface"], vip["interfaces"]) == ("eth0", {"px1": "eth0", "px2": "ens3"})
    inv["hostvars"]["px2"]["pd_proxy_vip_interface"] = "ens 3"
    assert problems(inv) == [
        "host px2: pd_proxy_vip_interface='ens 3' is not a network interface name (at most 15 letters, digits, "
        "'.', '-', '_')"
    ]
    del inv["hostvars"]["px2"]["pd_proxy_vip_interface"]
    for h in ("px1", "px2"):
        inv["hostvars"][h].pop("pd_proxy_vip_interface", None)
    inv["hostvars"]["px1"]["pd_nic_name"] = "bond0"
    assert problems(inv) == [
        "host px2: pd_proxy_vip=10.0.0.100 needs pd_proxy_vip_interface: the network interface of the proxy host "
        "that carries the virtual IP (e.g. eth0)"
    ]


def test_vip_variables_are_known_names():
    plan = build_plan(cluster(pd_proxy_vip="10.0.0.100", pd_proxy_vip_interface="eth0", pd_proxy_vrrp_router_id=7))
    assert not [w for w in plan["warnings"] if "unknown variable" in w]
    assert plan["proxy_vip"]["router_id"] == 7
