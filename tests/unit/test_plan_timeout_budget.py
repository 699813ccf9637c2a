"""One timeout budget for vllm-ascend Mooncake, computed in the plan and checked (issue 16, part 4).

Each inconsistent pair is refused with its one line, and the value that line suggests is
applied to show it really is consistent.
"""

from __future__ import annotations

import re

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan, render_table
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_budget import (
    derived_transfer_ms,
    rdma_window_ms,
)


def inventory(**vars_):
    """The seed's shape: 1P1D with Mooncake on one ascend host, which is also the proxy."""
    hv = {"ansible_host": "10.0.0.1", "pd_platform": "ascend", "pd_connector": "mooncake", "pd_model": "/m"}
    hv.update({"pd_tp": 2, **vars_})
    return {"groups": {"prefill": ["n1"], "decode": ["n1"], "proxy": ["n1"]}, "hostvars": {"n1": hv}}


def budget(plan):
    return {(r["name"], tuple(r["applies_to"])): (r["value"], r["unit"], r["source"]) for r in plan["timeouts"]}


def refused(**vars_):
    with pytest.raises(PlanError) as err:
        build_plan(inventory(**vars_))
    return err.value.problems


def test_vllm_ascend_formulas():
    # get_transfer_timeout_value: int(4.096 * 2**T * R // 1000 + 3000) ms.
    assert derived_transfer_ms(20, 7) == 33064
    assert derived_transfer_ms(17, 7) == 6758
    assert round(rdma_window_ms(20, 7)) == 30065


def test_defaults_are_consistent_and_shown_with_their_sources():
    plan = build_plan(inventory())
    both = ("prefill-0", "decode-0")
    assert budget(plan) == {
        ("HCCL_RDMA_TIMEOUT", both): (20, "exponent", "default (pd_env)"),
        ("HCCL_RDMA_RETRY_CNT", both): (7, "count", "default (pd_env)"),
        ("ASCEND_CONNECT_TIMEOUT", both): (10000, "ms", "default (pd_env)"),
        ("ASCEND_TRANSFER_TIMEOUT", both): (33064, "ms", "derived from HCCL_RDMA_*"),
        ("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", ("prefill-0",)): (480, "s", "default (pd_env)"),
        ("rdma retransmission window", both): (30064.8, "ms", "4.096us*2^T*R"),
        ("proxy connect_timeout", ("proxy",)): (5.0, "s", "default (pd_proxy_connect_timeout)"),
        ("proxy prefill_timeout", ("proxy",)): (600.0, "s", "default (pd_proxy_prefill_timeout)"),
        ("proxy decode_timeout", ("proxy",)): (600.0, "s", "default (pd_proxy_decode_timeout)"),
        ("proxy kv_release_timeout", ("proxy",)): (10.0, "s", "default (pd_proxy_kv_release_timeout)"),
    }
    # plan.yml prints the budget under the layout table.
    lines = render_table(plan)
    assert lines[lines.index("") + 1].split() == ["TIMEOUT", "VALUE", "SOURCE", "INSTANCES"]
    assert any(line.split()[:3] == ["ASCEND_TRANSFER_TIMEOUT", "33064", "ms"] for line in lines)


def test_a_tuned_consistent_set_passes_and_names_each_variable():
    plan = build_plan(
        inventory(
            pd_hccl_env={"HCCL_RDMA_TIMEOUT": 17},
            pd_env={
                "ASCEND_TRANSFER_TIMEOUT": "5000",
                "ASCEND_CONNECT_TIMEOUT": "3000",
                "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT": "60",
            },
            pd_proxy_decode_timeout=30,
        )
    )
    b = budget(plan)
    both = ("prefill-0", "decode-0")
    assert b[("HCCL_RDMA_TIMEOUT", both)] == (17, "exponent", "pd_hccl_env")
    assert b[("ASCEND_TRANSFER_TIMEOUT", both)] == (5000, "ms", "pd_env")
    assert b[("ASCEND_CONNECT_TIMEOUT", both)] == (3000, "ms", "pd_env")
    # Only the prefill reads the abort timeout.
    assert b[("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", ("prefill-0",))] == (60, "s", "pd_env")
    assert b[("proxy decode_timeout", ("proxy",))] == (30, "s", "pd_proxy_decode_timeout")


def test_other_stacks_have_no_budget():
    inv = inventory(pd_platform="cuda", pd_connector="nixl")
    assert build_plan(inv)["timeouts"] is None


PAIRS = {
    "transfer-vs-rdma-retries": (
        {"pd_env": {"ASCEND_TRANSFER_TIMEOUT": "20000"}},
        [
            f"host n1: {inst} ASCEND_TRANSFER_TIMEOUT=20000 ms (pd_env) is not above the RDMA retransmission window "
            "30065 ms of HCCL_RDMA_TIMEOUT=20 (default (pd_env)) and HCCL_RDMA_RETRY_CNT=7 (default (pd_env)): a "
            "transfer is cut while HCCL still retries; set ASCEND_TRANSFER_TIMEOUT=33064 (or leave it unset: "
            "vllm-ascend derives that), or lower HCCL_RDMA_TIMEOUT"
            for inst in ("prefill-0", "decode-0")
        ],
        ("pd_env", "ASCEND_TRANSFER_TIMEOUT"),
    ),
    "abort-vs-pull": (
        {"pd_prefill_env": {"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT": "30"}},
        [
            "host n1: prefill-0 VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=30 s (pd_prefill_env) does not outlast a KV "
            "pull on decode-0, ASCEND_CONNECT_TIMEOUT=10000 ms (default (pd_env)) + ASCEND_TRANSFER_TIMEOUT=33064 "
            "ms (derived from HCCL_RDMA_*): the prefill may free KV under a transfer; set VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT=480 (at least 45)"
        ],
        ("pd_prefill_env", "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT"),
    ),
    "proxy-decode-vs-pull": (
        {"pd_proxy_decode_timeout": 30, "pd_decode_env": {"ASCEND_CONNECT_TIMEOUT": "20000"}},
        [
            "host n1: pd_proxy_decode_timeout=30 s (pd_proxy_decode_timeout) is shorter than a KV pull on "
            "decode-0, ASCEND_CONNECT_TIMEOUT=20000 ms (pd_decode_env) + ASCEND_TRANSFER_TIMEOUT=33064 ms (derived "
            "from HCCL_RDMA_*): the proxy gives up on a pull "
            "that may still succeed; set pd_proxy_decode_timeout=55 or more"
        ],
        ("pd_proxy_decode_timeout", None),
    ),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_each_inconsistent_pair_is_refused_and_its_suggestion_is_consistent(case):
    vars_, expected, (var, key) = PAIRS[case]
    assert refused(**vars_) == expected
    suggested = int(re.search(r"set \S+?=(\d+)", expected[0]).group(1))
    fixed = dict(vars_)
    if key is None:
        fixed[var] = suggested
    else:
        fixed[var] = {**vars_[var], key: str(suggested)}
    assert build_plan(inventory(**fixed))["timeouts"]


@pytest.mark.parametrize(
    ("vars_", "problem"),
    [
        (
            {"pd_hccl_env": {"HCCL_RDMA_TIMEOUT": "30"}},
            "host n1: pd_hccl_env.HCCL_RDMA_TIMEOUT='30' must be an integer in 5..20 (exponent)",
        ),
        (
            {"pd_decode_env": {"HCCL_RDMA_RETRY_CNT": "0"}},
            "host n1: pd_decode_env.HCCL_RDMA_RETRY_CNT='0' must be an integer in 1..7 (count)",
        ),
        (
            {"pd_env": {"ASCEND_CONNECT_TIMEOUT": "3s"}},
            "host n1: pd_env.ASCEND_CONNECT_TIMEOUT='3s' must be an integer in 1..86400000 (ms)",
        ),
        # A digit that is not ASCII passes str.isdigit() and makes int() raise: a line, not a crash.
        (
            {"pd_hccl_env": {"HCCL_RDMA_TIMEOUT": "\u00b9"}},
            "host n1: pd_hccl_env.HCCL_RDMA_TIMEOUT='\u00b9' must be an integer in 5..20 (exponent)",
        ),
    ],
)
def test_a_value_its_reader_refuses_is_one_line(vars_, problem):
    assert refused(**vars_) == [problem]
