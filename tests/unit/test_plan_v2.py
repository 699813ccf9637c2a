"""Plan schema 2 (docs/plan-schema.md): each host's directories and services, typed port claims,
the instances' and proxies' URLs. The seed's 1P1D and the local inventory are asserted whole;
the planner reads the directories from the inventory, the roles read them from the plan."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan, host_address
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_vars import DIR_VARS
from plan_support import load_inventory

DEFAULT_DIRS = {
    "conf": "/etc/openfuyao-pd",
    "log": "/var/log/openfuyao-pd",
    "state": "/var/lib/openfuyao-pd",
    "run": "/run/openfuyao-pd",
    "data": "/var/lib/openfuyao-pd",
}


def claim(start, end, owner, use, kind, var):
    return {"start": start, "end": end, "purpose": f"{owner} {use}", "kind": kind, "owner": owner, "use": use,
            "var": var}


def service(name, kind, start, log, instance=None):
    out = {"name": name, "kind": kind, "owner": instance or kind}
    if instance:
        out["instance"] = instance
    return {**out, "start": start, "log": log}


def test_seed_1p1d_v2_sections():
    plan = build_plan(load_inventory("ascend-1p1d"))
    assert plan["schema_version"] == 2
    host = plan["hosts"]["npu-node1"]
    assert host["dirs"] == DEFAULT_DIRS
    assert host["services"] == [
        service("openfuyao-pd-prefill-0", "prefill", "/etc/openfuyao-pd/instances/prefill-0/container.sh",
                "/var/log/openfuyao-pd/prefill-0.log", "prefill-0"),
        service("openfuyao-pd-decode-0", "decode", "/etc/openfuyao-pd/instances/decode-0/container.sh",
                "/var/log/openfuyao-pd/decode-0.log", "decode-0"),
        service("openfuyao-pd-proxy", "proxy", "pd-proxy --config /etc/openfuyao-pd/proxy.json",
                "/var/log/openfuyao-pd/proxy.log"),
    ]
    rng = "(random)"
    assert host["ports"] == [
        claim(8107, 8107, "prefill-0", "http", "bind", "pd_prefill_http_port_base"),
        claim(20001, 20002, "prefill-0", "kv side channel", "bind", "pd_prefill_kv_port_base"),
        claim(15000, 17000, "prefill-0", f"mooncake transfer engine rpc {rng}", "pool", "pd_prefill_kv_port_base"),
        claim(20000, 20099, "prefill-0", f"ascend direct transfer device 0 {rng}", "pool", "pd_prefill_kv_port_base"),
        claim(20100, 20199, "prefill-0", f"ascend direct transfer device 1 {rng}", "pool", "pd_prefill_kv_port_base"),
        claim(8207, 8207, "decode-0", "http", "bind", "pd_decode_http_port_base"),
        claim(15000, 17000, "decode-0", f"mooncake transfer engine rpc {rng}", "pool", "pd_decode_kv_port_base"),
        claim(20200, 20299, "decode-0", f"ascend direct transfer device 2 {rng}", "pool", "pd_decode_kv_port_base"),
        claim(20300, 20399, "decode-0", f"ascend direct transfer device 3 {rng}", "pool", "pd_decode_kv_port_base"),
        claim(9090, 9090, "proxy", "http", "bind", "pd_proxy_port"),
    ]
    assert [(i["name"], i["url"], i["health_url"]) for i in plan["instances"]] == [
        ("prefill-0", "http://127.0.0.1:8107", "http://127.0.0.1:8107/health"),
        ("decode-0", "http://127.0.0.1:8207", "http://127.0.0.1:8207/health"),
    ]
    assert [(p["url"], p["local_url"]) for p in plan["proxies"]] == [("http://127.0.0.1:9090", "http://127.0.0.1:9090")]
    assert plan["endpoint"] == {"address": "127.0.0.1", "port": 9090, "vip": False, "url": "http://127.0.0.1:9090"}


def test_local_v2_sections():
    plan = build_plan(load_inventory("local"))
    host = plan["hosts"]["localhost"]
    assert host["dirs"] == DEFAULT_DIRS
    assert host["services"] == [
        service("openfuyao-pd-prefill-0", "prefill", "/etc/openfuyao-pd/instances/prefill-0/run.sh",
                "/var/log/openfuyao-pd/prefill-0.log", "prefill-0"),
        service("openfuyao-pd-decode-0", "decode", "/etc/openfuyao-pd/instances/decode-0/run.sh",
                "/var/log/openfuyao-pd/decode-0.log", "decode-0"),
        service("openfuyao-pd-proxy", "proxy", "pd-proxy --config /etc/openfuyao-pd/proxy.json",
                "/var/log/openfuyao-pd/proxy.log"),
    ]
    assert host["ports"] == [
        claim(8100, 8100, "prefill-0", "http", "bind", "pd_prefill_http_port_base"),
        claim(8200, 8200, "decode-0", "http", "bind", "pd_decode_http_port_base"),
        claim(9090, 9090, "proxy", "http", "bind", "pd_proxy_port"),
    ]
    assert [i["url"] for i in plan["instances"]] == ["http://127.0.0.1:8100", "http://127.0.0.1:8200"]
    assert (plan["proxy"]["url"], plan["proxy"]["local_url"]) == ("http://127.0.0.1:9090", "http://127.0.0.1:9090")
    assert plan["endpoint"]["url"] == "http://127.0.0.1:9090"


def test_dirs_come_from_the_inventory_variables():
    inv = load_inventory("local")
    inv["hostvars"]["localhost"].update(
        vllm_pd_conf_dir="/srv/pd/conf/", vllm_pd_log_dir="/srv/pd/log", vllm_pd_state_dir="/srv/pd/state",
        vllm_pd_run_dir="/srv/pd/run", pd_data_dir="/srv/pd/data",
    )
    plan = build_plan(inv)
    host = plan["hosts"]["localhost"]
    assert host["dirs"] == {"conf": "/srv/pd/conf", "log": "/srv/pd/log", "state": "/srv/pd/state",
                            "run": "/srv/pd/run", "data": "/srv/pd/data"}
    assert host["services"][0]["start"] == "/srv/pd/conf/instances/prefill-0/run.sh"
    assert host["services"][2] == service("openfuyao-pd-proxy", "proxy", "pd-proxy --config /srv/pd/conf/proxy.json",
                                          "/srv/pd/log/proxy.log")
    assert plan["model"]["path"] == "/srv/pd/data/models/tiny-llama"


def test_dir_table_names_the_role_variables():
    assert {k: (d.var, d.type, d.default) for k, d in DIR_VARS.items()} == {
        "conf": ("vllm_pd_conf_dir", "path", "/etc/openfuyao-pd"),
        "log": ("vllm_pd_log_dir", "path", "/var/log/openfuyao-pd"),
        "state": ("vllm_pd_state_dir", "path", "/var/lib/openfuyao-pd"),
        "run": ("vllm_pd_run_dir", "path", "/run/openfuyao-pd"),
        "data": ("pd_data_dir", "path", "/var/lib/openfuyao-pd"),
    }
    assert all(d.doc for d in DIR_VARS.values())


def test_relative_dir_is_refused_with_one_line():
    inv = load_inventory("local")
    inv["hostvars"]["localhost"]["vllm_pd_log_dir"] = "logs"
    with pytest.raises(PlanError) as err:
        build_plan(inv)
    assert err.value.problems == [
        "host localhost: vllm_pd_log_dir='logs' must be an absolute path (e.g. /var/log/openfuyao-pd)"
    ]


def test_ipv6_urls_are_bracketed():
    inv = load_inventory("local")
    hv = inv["hostvars"]["localhost"]
    hv["pd_address"] = "fd00::5"
    hv["pd_proxy_bind_host"] = "::"
    plan = build_plan(inv)
    assert [i["url"] for i in plan["instances"]] == ["http://[fd00::5]:8100", "http://[fd00::5]:8200"]
    assert (plan["proxy"]["url"], plan["proxy"]["local_url"]) == ("http://[fd00::5]:9090", "http://127.0.0.1:9090")
    assert plan["endpoint"]["url"] == "http://[fd00::5]:9090"


def test_vip_and_master_hosts_list_their_services():
    inv = copy.deepcopy(load_inventory("ascend-store"))
    inv["groups"]["mooncake_master"] = ["pd-proxy"]
    plan = build_plan(inv)
    kinds = {h: [s["kind"] for s in v["services"]] for h, v in plan["hosts"].items()}
    assert kinds["pd-proxy"] == ["proxy", "mooncake_master"]
    master = plan["hosts"]["pd-proxy"]["services"][1]
    assert master == service("openfuyao-pd-mooncake-master", "mooncake_master",
                             "mooncake_master --port={}".format(plan["mooncake"]["master"]["port"]),
                             "/var/log/openfuyao-pd/mooncake-master.log")
    assert [c["owner"] for c in plan["hosts"]["pd-proxy"]["ports"]].count("mooncake_master") == 2
    # Every port claim's owner is a service of its host (site.yml skips the ports of running ones).
    for view in plan["hosts"].values():
        assert {c["owner"] for c in view["ports"]} <= {s["owner"] for s in view["services"]}


def test_host_address_rule_is_the_planners():
    assert host_address("n1", {"ansible_host": "[fd00::1]"}) == ("fd00::1", None)
    assert host_address("n1", {"ansible_host": "10.0.0.1", "pd_address": "10.0.1.1"}) == ("10.0.1.1", None)
    assert host_address("localhost", {"ansible_connection": "local"}) == ("127.0.0.1", None)
    assert host_address("n1", {"ansible_host": "localhost"}) == ("127.0.0.1", None)
    assert host_address("n1", {}) == ("n1", None)


def test_vip_proxies_run_keepalived():
    base = {"pd_platform": "cpu", "pd_connector": "shared_storage", "pd_model": "builtin:tiny-llama",
            "pd_proxy_vip": "10.0.0.100", "pd_proxy_vip_interface": "eth0", "pd_proxy_bind_host": "0.0.0.0"}
    addresses = {"p1": "10.0.0.1", "d1": "10.0.0.2", "px1": "10.0.0.11", "px2": "10.0.0.12"}
    plan = build_plan({
        "groups": {"prefill": ["p1"], "decode": ["d1"], "proxy": ["px1", "px2"]},
        "hostvars": {h: {**base, "ansible_host": a} for h, a in addresses.items()},
    })
    for h in ("px1", "px2"):
        assert plan["hosts"][h]["services"] == [
            service("openfuyao-pd-proxy", "proxy", "pd-proxy --config /etc/openfuyao-pd/proxy.json",
                    "/var/log/openfuyao-pd/proxy.log"),
            service("openfuyao-pd-keepalived", "keepalived", "keepalived --use-file /etc/openfuyao-pd/keepalived.conf",
                    "/var/log/openfuyao-pd/keepalived.log"),
        ]
    assert [p["url"] for p in plan["proxies"]] == ["http://10.0.0.11:9090", "http://10.0.0.12:9090"]
    assert [p["local_url"] for p in plan["proxies"]] == ["http://127.0.0.1:9090", "http://127.0.0.1:9090"]
    assert plan["endpoint"]["url"] == "http://10.0.0.100:9090"
