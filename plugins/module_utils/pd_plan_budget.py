# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""The timeout budget of a vllm-ascend Mooncake deployment, computed and checked as one.

A KV pull crosses four clocks that are set in four places: HCCL's RDMA retransmission
(HCCL_RDMA_TIMEOUT, HCCL_RDMA_RETRY_CNT), Mooncake's Ascend Direct connect and transfer
timeouts (ASCEND_CONNECT_TIMEOUT, ASCEND_TRANSFER_TIMEOUT), the prefill's abort timeout after
which it frees KV nobody pulled (VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT) and the proxy's wait for
the decode (pd_proxy_decode_timeout). When they disagree, transfers are cut while RDMA still
retries, KV is freed under a transfer, or the proxy gives up on a pull that would succeed.
Sources: reference/connectors.md §1.8 (Mooncake's Ascend Direct table and its advice "configure
ASCEND_TRANSFER_TIMEOUT to be slightly larger than retransmission_timeout * HCCL_RDMA_RETRY_CNT"),
§2.2 (vllm-ascend's get_transfer_timeout_value), ascend-tools.md (HCCL ranges and defaults),
pd-proxies.md (the 480 s abort timeout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_checks import uint_text


@dataclass(frozen=True)
class Knob:
    """One environment timeout: its default when unset and the values its reader accepts."""

    name: str
    default: int | None  # None: derived (ASCEND_TRANSFER_TIMEOUT)
    low: int
    high: int
    unit: str
    roles: tuple[str, ...]  # the roles whose engines read it


KNOBS = (
    Knob("HCCL_RDMA_TIMEOUT", 20, 5, 20, "exponent", ("prefill", "decode")),
    Knob("HCCL_RDMA_RETRY_CNT", 7, 1, 7, "count", ("prefill", "decode")),
    # Mooncake's code default (transfer_executor_base.h), not the 3000 its doc table says.
    Knob("ASCEND_CONNECT_TIMEOUT", 10000, 1, 86_400_000, "ms", ("prefill", "decode")),
    Knob("ASCEND_TRANSFER_TIMEOUT", None, 1, 86_400_000, "ms", ("prefill", "decode")),
    Knob("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", 480, 1, 86_400 * 7, "s", ("prefill",)),
)
BY_NAME = {k.name: k for k in KNOBS}
# The proxy's own timeouts shown with the budget (files/connector/openfuyao_pd/proxy/options.py).
PROXY_TIMEOUTS = ("connect_timeout", "prefill_timeout", "decode_timeout", "kv_release_timeout")


@dataclass(frozen=True)
class Value:
    name: str
    value: int | float
    unit: str
    source: str  # the variable that set it, "default" or "derived ..."
    owner: str  # instance name, or "proxy"


def rdma_window_ms(timeout_exp: int, retries: int) -> float:
    """HCCL's retransmission time: 4.096 us * 2^HCCL_RDMA_TIMEOUT per try, HCCL_RDMA_RETRY_CNT tries."""
    return 4.096 * (2**timeout_exp) * retries / 1000


def derived_transfer_ms(timeout_exp: int, retries: int) -> int:
    """What vllm-ascend sets ASCEND_TRANSFER_TIMEOUT to when it is unset (get_transfer_timeout_value)."""
    return int((4.096 * (2**timeout_exp)) * retries // 1000 + 3000)


def _parse(knob: Knob, raw: str, source: str) -> tuple[int | None, str | None]:
    number = uint_text(str(raw))
    if number is not None and knob.low <= number <= knob.high:
        return number, None
    return None, f"{source}.{knob.name}={raw!r} must be an integer in {knob.low}..{knob.high} ({knob.unit})"


def instance_values(
    name: str, role: str, env: dict[str, str], sources: dict[str, str]
) -> tuple[list[Value], list[str]]:
    """The budget values one engine instance runs with (env first, then the documented defaults);
    problems are unprefixed (the caller names the host)."""
    values, problems, got = [], [], {}
    for knob in KNOBS:
        if role not in knob.roles:
            continue
        if knob.name in env:
            number, problem = _parse(knob, env[knob.name], sources[knob.name])
            if problem:
                problems.append(problem)
                continue
            got[knob.name] = Value(knob.name, number, knob.unit, sources[knob.name], name)
        elif knob.default is not None:
            got[knob.name] = Value(knob.name, knob.default, knob.unit, "default (pd_env)", name)
    if "HCCL_RDMA_TIMEOUT" in got and "HCCL_RDMA_RETRY_CNT" in got:
        exp, tries = got["HCCL_RDMA_TIMEOUT"].value, got["HCCL_RDMA_RETRY_CNT"].value
        if "ASCEND_TRANSFER_TIMEOUT" not in got and "ASCEND_TRANSFER_TIMEOUT" not in env:
            got["ASCEND_TRANSFER_TIMEOUT"] = Value(
                "ASCEND_TRANSFER_TIMEOUT",
                derived_transfer_ms(exp, tries),
                "ms",
                "derived from HCCL_RDMA_*",
                name,
            )
        values.append(
            Value(
                "rdma retransmission window",
                round(rdma_window_ms(exp, tries), 1),
                "ms",
                "4.096us*2^T*R",
                name,
            )
        )
    return [got[k.name] for k in KNOBS if k.name in got] + values, problems


def _of(values: list[Value], owner: str, name: str) -> Value | None:
    return next((v for v in values if v.owner == owner and v.name == name), None)


def _pull_ms(values: list[Value], owner: str) -> tuple[int, Value, Value] | None:
    connect, transfer = _of(values, owner, "ASCEND_CONNECT_TIMEOUT"), _of(values, owner, "ASCEND_TRANSFER_TIMEOUT")
    if connect is None or transfer is None:
        return None
    return connect.value + transfer.value, connect, transfer


def check(
    values: list[Value], prefills: list[str], decodes: list[str], proxy_decode: Value, host_of: dict[str, str]
) -> list[str]:
    """Every inconsistent pair, one line naming the host, both variables and a value that satisfies
    them (host_of: instance name, and "proxy", to its inventory host)."""
    problems = []
    # 1. Mooncake's advice: the transfer timeout must outlast HCCL's RDMA retries.
    for owner in prefills + decodes:
        exp, tries = _of(values, owner, "HCCL_RDMA_TIMEOUT"), _of(values, owner, "HCCL_RDMA_RETRY_CNT")
        transfer = _of(values, owner, "ASCEND_TRANSFER_TIMEOUT")
        if exp is None or tries is None or transfer is None or transfer.source.startswith("derived"):
            continue
        window = rdma_window_ms(exp.value, tries.value)
        if transfer.value <= window:
            problems.append(
                f"host {host_of[owner]}: {owner} ASCEND_TRANSFER_TIMEOUT={transfer.value} ms ({transfer.source}) is not above the RDMA "
                f"retransmission window {window:.0f} ms of HCCL_RDMA_TIMEOUT={exp.value} ({exp.source}) and "
                f"HCCL_RDMA_RETRY_CNT={tries.value} ({tries.source}): a transfer is cut while HCCL still retries; "
                f"set ASCEND_TRANSFER_TIMEOUT={derived_transfer_ms(exp.value, tries.value)} (or leave it unset: "
                "vllm-ascend derives that), or lower HCCL_RDMA_TIMEOUT"
            )
    pulls = [(p, d) for d in decodes if (p := _pull_ms(values, d)) is not None]
    if not pulls:
        return problems
    (longest, connect, transfer), decode = max(pulls, key=lambda x: x[0][0])
    pull = (
        f"a KV pull on {decode}, ASCEND_CONNECT_TIMEOUT={connect.value} ms ({connect.source}) + "
        f"ASCEND_TRANSFER_TIMEOUT={transfer.value} ms ({transfer.source})"
    )
    enough = math.ceil(longest / 1000) + 1
    # 2. The prefill must hold unpulled KV longer than the slowest allowed pull.
    aborts = [a for p in prefills if (a := _of(values, p, "VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT")) is not None]
    if aborts:
        shortest = min(aborts, key=lambda a: a.value)
        if shortest.value * 1000 <= longest:
            problems.append(
                f"host {host_of[shortest.owner]}: {shortest.owner} VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT={shortest.value} s ({shortest.source}) "
                f"does not outlast {pull}: the prefill may free KV under a transfer; set "
                f"VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT={max(enough, 480)} (at least {enough})"
            )
    # 3. The proxy must wait for the decode at least as long as its pull may take.
    if proxy_decode.value * 1000 <= longest:
        problems.append(
            f"host {host_of['proxy']}: pd_proxy_decode_timeout={proxy_decode.value:g} s ({proxy_decode.source}) is shorter than "
            f"{pull}: the proxy gives up on a pull that may still succeed; set pd_proxy_decode_timeout={enough} "
            "or more"
        )
    return problems


def rows(values: list[Value]) -> list[dict]:
    """The budget for the plan: one row per (setting, value, source), with the instances it applies to."""
    out: dict[tuple, dict] = {}
    for v in values:
        key = (v.name, v.value, v.source)
        row = out.setdefault(key, {"name": v.name, "value": v.value, "unit": v.unit, "source": v.source, "applies_to": []})
        row["applies_to"].append(v.owner)
    return list(out.values())
