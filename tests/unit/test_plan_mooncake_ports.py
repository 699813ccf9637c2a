"""Ascend Direct (ADXL) random-port pools follow the Mooncake version (issue 16, part 3).

Mooncake's Ascend Direct transport picks each NPU's listen port at random in
ASCEND_BASE_PORT + phy_id*kPortRange ... + kPortRange, kPortRange being 1000 up to 0.3.7.post2
and 100 from 0.3.9 (reference/connectors.md §1.9; vllm-ascend#14263). The plan claims the
pool of the version named by pd_mooncake_version (else the mooncake role's mooncake_version,
else the version that role installs), and warns about explicit ports inside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import (
    DEFAULT_MOONCAKE_VERSION,
    PlanError,
    adxl_ports_per_device,
    build_plan,
    mooncake_release,
)

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "0.3.7.post2", "0.3.9"


def plan_1p1d(**vars_):
    """The seed's shape: 1P1D on one ascend host (tp 2: prefill NPUs 0,1, decode 2,3)."""
    hv = {"ansible_host": "10.0.0.1", "pd_platform": "ascend", "pd_connector": "mooncake", "pd_model": "/m"}
    hv.update({"pd_tp": 2, **vars_})
    return build_plan({"groups": {"prefill": ["n1"], "decode": ["n1"], "proxy": ["n1"]}, "hostvars": {"n1": hv}})


def adxl_pools(plan, name="prefill-0"):
    inst = next(i for i in plan["instances"] if i["name"] == name)
    return [(p["start"], p["end"]) for p in inst["ports"] if p["purpose"].startswith("ascend direct")]


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("0.3.7.post2", (0, 3, 7)),
        ("v0.3.9", (0, 3, 9)),
        ("0.3.13.post1", (0, 3, 13)),
        ("0.3.10rc1", (0, 3, 10)),
        (" 0.4.0 ", (0, 4, 0)),
        ("0.3", None),
        ("latest", None),
        ("0.3.9-beta", None),
        (0.3, None),
        (None, None),
    ],
)
def test_version_parsing(text, release):
    assert mooncake_release(text) == release


@pytest.mark.parametrize(
    ("text", "per_device"),
    [("0.3.6", 1000), (OLD, 1000), ("0.3.8.post1", 1000), (NEW, 100), ("0.3.13.post1", 100), ("1.0.0", 100)],
)
def test_pool_size_per_release(text, per_device):
    # 0.3.8.x is undocumented: it keeps the larger, safe block.
    assert adxl_ports_per_device(mooncake_release(text)) == per_device


def test_default_version_is_what_the_mooncake_role_installs():
    defaults = yaml.safe_load((ROOT / "roles/mooncake/defaults/main.yml").read_text())
    assert str(defaults["mooncake_version"]) == DEFAULT_MOONCAKE_VERSION


@pytest.mark.parametrize(
    ("vars_", "pools"),
    [
        ({"pd_mooncake_version": OLD}, [(20000, 20999), (21000, 21999)]),
        ({"pd_mooncake_version": NEW}, [(20000, 20099), (20100, 20199)]),
        ({}, [(20000, 20099), (20100, 20199)]),  # default 0.3.13.post1
        # The role's own pin counts when pd_mooncake_version is unset; pd_mooncake_version wins.
        ({"mooncake_version": OLD}, [(20000, 20999), (21000, 21999)]),
        ({"mooncake_version": OLD, "pd_mooncake_version": NEW}, [(20000, 20099), (20100, 20199)]),
        # An explicit block size beats the version; the base moves both rules.
        ({"pd_mooncake_version": NEW, "pd_adxl_ports_per_device": 500}, [(20000, 20499), (20500, 20999)]),
        ({"pd_mooncake_version": OLD, "pd_adxl_base_port": 30000}, [(30000, 30999), (31000, 31999)]),
    ],
)
def test_plan_claims_the_pool_of_the_version(vars_, pools):
    plan = plan_1p1d(**vars_)
    assert adxl_pools(plan) == pools
    # The decode's NPUs 2,3 get their own blocks under the same rule.
    base, per = pools[0][0], pools[0][1] - pools[0][0] + 1
    assert adxl_pools(plan, "decode-0") == [(base + 2 * per, base + 3 * per - 1), (base + 3 * per, base + 4 * per - 1)]


def test_a_kv_port_only_the_old_rule_collides_with():
    # 21000-21001 is device 1's block under 1000 ports a device; past 20199 under 100.
    old = plan_1p1d(pd_mooncake_version=OLD, pd_prefill_kv_port_base=21000)
    assert old["warnings"] == [
        "host n1: prefill-0 kv side channel port 21000-21001 lies inside the ascend direct transfer "
        "range 21000-21999; a random pick there may collide: move pd_prefill_kv_port_base outside it"
    ]
    assert plan_1p1d(pd_mooncake_version=NEW, pd_prefill_kv_port_base=21000)["warnings"] == []


def test_the_seeds_port_warns_under_both_rules():
    for version, pool in ((OLD, "20000-20999"), (NEW, "20000-20099")):
        plan = plan_1p1d(pd_mooncake_version=version, pd_prefill_kv_port_base=20001)
        assert plan["warnings"] == [
            f"host n1: prefill-0 kv side channel port 20001-20002 lies inside the ascend direct transfer "
            f"range {pool}; a random pick there may collide: move pd_prefill_kv_port_base outside it"
        ]


@pytest.mark.parametrize("version", [OLD, NEW])
def test_auto_kv_ports_do_not_move_with_the_version(version):
    # Past the old rule's block (the vllm-ascend tutorial's kv_port >= 28000 for 8 NPUs) either way.
    plan = plan_1p1d(pd_mooncake_version=version)
    kv = {i["name"]: i["kv_port"] for i in plan["instances"]}
    assert kv == {"prefill-0": 28000, "decode-0": 29000}
    assert plan["warnings"] == []


@pytest.mark.parametrize(
    ("value", "shown"), [("0.3", "'0.3'"), (0.3, "0.3"), ("latest", "'latest'"), (["0.3.9"], "['0.3.9']")]
)
def test_bad_version_is_one_line(value, shown):
    with pytest.raises(PlanError) as err:
        plan_1p1d(pd_mooncake_version=value)
    assert err.value.problems == [
        f"host n1: pd_mooncake_version={shown} is not a Mooncake version: write it as MAJOR.MINOR.PATCH "
        "with an optional .postN/rcN (e.g. 0.3.13.post1), quoted in YAML"
    ]


def test_bad_role_pin_names_the_role_variable():
    with pytest.raises(PlanError) as err:
        plan_1p1d(mooncake_version="newest")
    assert err.value.problems[0].startswith("host n1: mooncake_version='newest' is not a Mooncake version")
