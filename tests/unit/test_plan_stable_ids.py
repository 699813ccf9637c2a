"""Stable identities: an instance's engine id, kv_rank and every port a connector keys on depend
on its host, role and index on that host only, so scaling never changes them for the instances
that stay (scale.yml then leaves those processes alone)."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import (
    PlanError,
    build_plan,
    instance_identity,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from test_plan_properties import SETTINGS, valid_inventory

# What a connector or the proxy keys on, per instance.
IDENTITY = ("engine_id", "kv_rank", "http_port", "kv_port", "dp_rpc_port")


def identities(plan):
    """{(host, role, index on host): identity fields} of every instance."""
    out, seen = {}, {}
    for i in plan["instances"]:
        k = seen[(i["host"], i["role"])] = seen.get((i["host"], i["role"]), -1) + 1
        out[(i["host"], i["role"], k)] = {f: i[f] for f in IDENTITY}
    return out


def test_identity_is_host_role_index():
    assert instance_identity("npu-node1", "prefill", 0) == ("prefill-npu-node1-0", 0)
    assert instance_identity("n2", "decode", 3) == ("decode-n2-3", 1)
    # Distinct (host, role, index) never share an engine id, even with dashes in host names.
    keys = [(h, r, k) for h in ("a", "a-1", "a-1-0", "b") for r in ("prefill", "decode") for k in range(3)]
    assert len({instance_identity(*key)[0] for key in keys}) == len(keys)


@st.composite
def scaled(draw):
    """An inventory and a copy where instances were added/removed on some hosts or roles, or a
    host joined a group."""
    inv = draw(valid_inventory())
    new = copy.deepcopy(inv)
    hosts = list(new["hostvars"])
    for _ in range(draw(st.integers(1, 3))):
        role = draw(st.sampled_from(["prefill", "decode"]))
        host = draw(st.sampled_from(hosts))
        n = draw(st.integers(0, 3))
        group = new["groups"][role]
        if n == 0:
            if host in group and len(group) > 1:
                group.remove(host)
                new["hostvars"][host].pop(f"pd_{role}_instances_per_host", None)
            continue
        if host not in group:
            group.append(host)  # a host joins the group at its end
        new["hostvars"][host][f"pd_{role}_instances_per_host"] = n
    assume(new != inv)
    return inv, new


@SETTINGS
@given(scaled())
def test_scaling_never_changes_a_staying_instance(pair):
    inv, new = pair
    before = identities(build_plan(inv))
    try:
        after = identities(build_plan(new))
    except PlanError:
        assume(False)  # e.g. the change needs more devices than the host has
    staying = before.keys() & after.keys()
    for key in staying:
        assert after[key] == before[key], key
    # Every other instance is new or gone: nothing else could keep an identity it did not have.
    assert {after[k]["engine_id"] for k in after.keys() - staying}.isdisjoint(
        {before[k]["engine_id"] for k in staying}
    )


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_adding_one_role_on_a_shared_host_keeps_the_other_unchanged(role):
    # The local-sim shape (both roles on one CPU host): the other role's instances are planned
    # byte for byte as before, so their files and processes stay.
    hv = {"ansible_host": "127.0.0.1", "pd_platform": "cpu", "pd_connector": "shared_storage",
          "pd_model": "/models/m", "pd_prefill_instances_per_host": 2, "pd_decode_instances_per_host": 2}
    inv = {"groups": {"prefill": ["h"], "decode": ["h"], "proxy": ["h"]}, "hostvars": {"h": hv}}
    new = copy.deepcopy(inv)
    new["hostvars"]["h"][f"pd_{role}_instances_per_host"] = 3
    other = "decode" if role == "prefill" else "prefill"
    before = [i for i in build_plan(inv)["instances"] if i["role"] == other]
    assert before == [i for i in build_plan(new)["instances"] if i["role"] == other]


def test_adding_a_prefill_keeps_the_nixl_decodes_side_channel():
    hv = {"ansible_host": "10.0.0.1", "pd_platform": "cuda", "pd_connector": "nixl", "pd_model": "/models/m",
          "pd_devices_per_host": 8, "pd_prefill_instances_per_host": 1, "pd_decode_instances_per_host": 2}
    inv = {"groups": {"prefill": ["h"], "decode": ["h"], "proxy": ["h"]}, "hostvars": {"h": hv}}
    new = copy.deepcopy(inv)
    new["hostvars"]["h"]["pd_prefill_instances_per_host"] = 2
    before, after = identities(build_plan(inv)), identities(build_plan(new))
    assert [after[("h", "decode", k)] for k in (0, 1)] == [before[("h", "decode", k)] for k in (0, 1)]
    assert before[("h", "decode", 0)]["kv_port"] is not None
