"""The chaos run's own logic (molecule/chaos/chaos.py): fault specs, the table, the targets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "molecule" / "chaos" / "chaos.py"
_SPEC = importlib.util.spec_from_file_location("pd_chaos", _PATH)
chaos = importlib.util.module_from_spec(_SPEC)
sys.modules["pd_chaos"] = chaos  # dataclasses resolve annotations through sys.modules
_SPEC.loader.exec_module(chaos)


def test_fault_specs():
    assert chaos.parse_fault("k=kill:c1:openfuyao-pd-decode-0") == chaos.Fault("k", "kill", "c1", "openfuyao-pd-decode-0")
    assert chaos.parse_fault("v=kill-vip-proxy").service == "openfuyao-pd-proxy"
    assert chaos.parse_fault("r=restart:c2") == chaos.Fault("r", "restart", "c2")
    with pytest.raises(SystemExit, match="use LABEL=kill:CONTAINER:SERVICE"):
        chaos.parse_fault("x=reboot")


def row(label, sent=100, failed=0, recovery=10.0, stream_errors=None, errors=None):
    return chaos.Row(label, sent, failed, 50, sum((stream_errors or {}).values()), recovery, "",
                     stream_errors or {}, errors or {})


ENGINE = chaos.Fault("decode", "kill", "c", "s")
PROXY = chaos.Fault("proxy", "kill-vip-proxy", service="openfuyao-pd-proxy")


def test_targets_met_and_table_totals():
    rows = [row("decode", failed=1, stream_errors={"stream error event: decode failed": 2}), row("proxy", failed=0)]
    assert chaos.problems(rows, [ENGINE, PROXY]) == []
    table = chaos.render(rows)
    assert table[0].split(" | ")[0].strip() == "fault"
    assert table[-1].split(" | ")[:3] == ["total ", "200 ", "1 (0.50 %)"]


def test_each_missed_target_is_named():
    rows = [
        row("decode", failed=3, recovery=None, stream_errors={"stream ended without [DONE]": 1}),
        row("proxy", recovery=61.0, errors={"timeout after 30s": 1}, stream_errors={"ServerDisconnectedError: x": 1}),
    ]
    assert chaos.problems(rows, [ENGINE, PROXY]) == [
        "non-streamed failures 3/200 exceed 1.0 %",
        "decode: no full capacity within 60 s (recovery None)",
        "decode: streams cut without an error event: {'stream ended without [DONE]': 1}",
        "proxy: no full capacity within 60 s (recovery 61.0)",
        "proxy: requests hung until their timeout: {'timeout after 30s': 1}",
    ]


REBOOT_VIP = chaos.Fault("reboot vip host", "restart-vip-proxy")


def test_a_rebooted_vip_holder_must_hand_the_vip_over():
    assert chaos.parse_fault("b=restart-vip-proxy") == chaos.Fault("b", "restart-vip-proxy")
    moved = row("reboot vip host", stream_errors={"ServerDisconnectedError: x": 1})
    moved.vip_before, moved.vip_after = "px1", "px2"
    # A stream cut by the proxy host's reboot has no proxy left to send an error event.
    assert chaos.problems([moved], [REBOOT_VIP]) == []
    stayed = row("reboot vip host")
    stayed.vip_before = stayed.vip_after = "px1"
    lost = row("reboot vip host")
    lost.vip_before = "px1"
    assert chaos.problems([stayed], [REBOOT_VIP]) == [
        "reboot vip host: the VIP did not move to the other proxy (px1 -> px1)"]
    assert chaos.problems([lost], [REBOOT_VIP]) == [
        "reboot vip host: the VIP did not move to the other proxy (px1 -> -)"]
