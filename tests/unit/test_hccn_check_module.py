"""hccn_check and npu_topology modules, in process, running the fake tools for real (run_command, argv)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils import ascend_tool
from ansible_collections.openfuyao.pd.plugins.modules import hccn_check, npu_topology

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SCENARIOS = FAKES / "scenarios"
CAPTURES = FAKES / "captures"


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Select a scenario for the fake tools; returns the path of the live (mutable) copy."""
    def use(name: str, conf: str | None = None) -> Path:
        dest = tmp_path / name
        shutil.copy(SCENARIOS / name, dest)
        monkeypatch.setenv("PD_FAKE_NPU_SCENARIO", str(dest))
        return dest
    return use


@pytest.fixture
def run(capsys):
    def call(module, args: dict, check_mode: bool = False) -> dict:
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        with patch_module_args(args), pytest.raises(SystemExit):
            module.main()
        return json.loads(capsys.readouterr().out)
    return call


def hccn(**kw) -> dict:
    return {"hccn_tool": str(FAKES / "hccn_tool"), "hccn_conf": "/nonexistent/hccn.conf", **kw}


def test_healthy_a2_all_checks_pass(host, run):
    host("healthy_a2.json")
    res = run(hccn_check, hccn(ping_targets=["10.30.0.10"]))
    assert not res.get("failed") and res["changed"] is False
    assert res["problems"] == []
    assert [d["device"] for d in res["devices"]] == list(range(8))  # no hccn.conf: 0..7
    dev = res["devices"][3]
    assert (dev["link"], dev["tls_switch"], dev["ip"], dev["netmask"], dev["net_health"], dev["flapping"]) == (
        "UP", 0, "10.20.0.13", "255.255.255.0", "Success", False)
    assert dev["ping"] == [{"target": "10.30.0.10", "transmitted": 3, "received": 3, "loss_pct": 0.0, "ok": True}]
    assert res["msg"] == "hccn_check: 8 device(s) passed link, link_stat, tls, ip, net_health, ping"
    assert res["table"][0].split() == ["device", "link", "flaps", "tls", "ip", "net_health", "ping", "vnic", "hccs_ping", "result"]


def test_a3_sixteen_devices_from_hccn_conf(host, run, tmp_path):
    host("healthy_a3.json")
    conf = tmp_path / "hccn.conf"
    conf.write_text("\n".join(f"address_{i}=10.21.0.{10 + i}" for i in range(16)) + "\n")
    res = run(hccn_check, hccn(hccn_conf=str(conf), checks=["ip"]))
    assert [d["device"] for d in res["devices"]] == list(range(16))
    assert res["devices"][15]["ip"] == res["devices"][15]["conf_ip"] == "10.21.0.25"


def test_every_fault_is_one_line_and_fails(host, run):
    host("link_down.json")
    res = run(hccn_check, hccn())
    assert res["failed"] is True
    assert res["problems"] == ["device 3: link status is DOWN; check the cable, optics and switch port "
                               "(hccn_tool -i 3 -link -g)"]
    assert res["msg"].splitlines() == ["hccn_check found 1 problem(s) on 1 device(s):", res["problems"][0]]


def test_stale_hccn_conf_address_is_reported(host, run, tmp_path):
    host("healthy_a2.json")
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=10.20.0.99\nnetmask_0=255.255.255.0\n")
    res = run(hccn_check, hccn(hccn_conf=str(conf), checks=["ip"], fail_on_problem=False))
    assert "failed" not in res or res["failed"] is False
    assert res["problems"] == [f"device 0: device IP 10.20.0.10 differs from address_0=10.20.0.99 in {conf} "
                               "(stale file?); fix the file or run `hccn_tool -i 0 -cfg recovery`"]


def test_fix_tls_check_mode_then_real(host, run):
    scen = host("tls_on.json")
    res = run(hccn_check, hccn(checks=["tls"], fix_tls=True), check_mode=True)
    assert res["changed"] is True and res["problems"] == []
    assert res["devices"][5]["tls_fixed"] is True
    assert json.loads(scen.read_text())["devices"]["5"]["tls"] == 1  # nothing touched in check mode

    res = run(hccn_check, hccn(checks=["tls"], fix_tls=True))
    assert res["changed"] is True and res["devices"][5]["tls_switch"] == 0
    assert json.loads(scen.read_text())["devices"]["5"]["tls"] == 0

    res = run(hccn_check, hccn(checks=["tls"], fix_tls=True))
    assert res["changed"] is False  # idempotent


def test_no_certificate_counts_as_tls_off(host, run):
    host("no_cert.json")
    res = run(hccn_check, hccn(checks=["tls"], devices=[0]))
    assert res["problems"] == [] and res["devices"][0]["tls_certificate"] is False
    assert res["devices"][0]["tls_switch"] == 0


def test_busy_tool_is_retried_with_backoff_then_passes(host, run, monkeypatch):
    scen = host("hccn_busy.json")
    sleeps: list[float] = []
    monkeypatch.setattr(ascend_tool, "backoff_sleep", sleeps.append)
    res = run(hccn_check, hccn(checks=["link"], devices=[0, 1], busy_retries=5))
    assert res["problems"] == []
    assert sleeps == [0.5, 1.0, 2.0]  # three busy answers, exponential backoff, then the real answer
    assert json.loads(scen.read_text())["hccn_busy_responses"] == 0


def test_busy_forever_is_one_actionable_line(host, run, monkeypatch):
    scen = host("healthy_a2.json")
    doc = json.loads(scen.read_text())
    doc["devices"] = {"2": {"busy_responses": 50}}
    scen.write_text(json.dumps(doc))
    monkeypatch.setattr(ascend_tool, "backoff_sleep", lambda s: None)
    res = run(hccn_check, hccn(checks=["link"], devices=[2], busy_retries=2))
    assert res["problems"] == ["device 2: `hccn_tool -i 2 -link -g` still answers 'hccn_tool is busy' after 2 "
                               "retries; stop other hccn_tool users on this host and run again"]


def with_doc(scen: Path, **changes) -> Path:
    doc = json.loads(scen.read_text())
    doc.update(changes)
    scen.write_text(json.dumps(doc))
    return scen


def test_busy_forever_costs_the_budget_once_not_per_call(host, run, monkeypatch):
    scen = with_doc(host("healthy_a2.json"), hccn_busy_responses=10**6)
    sleeps: list[float] = []
    monkeypatch.setattr(ascend_tool, "backoff_sleep", sleeps.append)
    res = run(hccn_check, hccn(busy_budget=3))
    assert sum(sleeps) == 3  # 0.5 + 1 + 1.5 (the rest of the budget), then no call is retried again
    assert res["devices"] == []
    assert res["problems"] == ["hccn_tool: `hccn_tool -i 0 -link -g` still answers 'hccn_tool is busy' after 3 s of "
                               "retries (busy_budget); devices 0, 1, 2, 3, 4, 5, 6, 7 not checked; stop other "
                               "hccn_tool users on this host and run again"]
    assert json.loads(scen.read_text())["hccn_busy_responses"] == 10**6 - 4  # four calls in all
    sleeps.clear()
    res = run(hccn_check, hccn())  # the defaults: a device busy forever costs busy_budget (20 s), once
    assert sum(sleeps) == 20
    assert res["problems"] == ["hccn_tool: `hccn_tool -i 0 -link_stat -g` still answers 'hccn_tool is busy' after 20 s "
                               "of retries (busy_budget); devices 0, 1, 2, 3, 4, 5, 6, 7 not checked; stop other "
                               "hccn_tool users on this host and run again"]


def test_a_hanging_tool_is_killed_and_a_second_hang_stops_the_host(host, run):
    with_doc(host("healthy_a2.json"), faults=[{"args": "-link_stat -g", "action": "hang"}])
    res = run(hccn_check, hccn(command_timeout=3))
    hang = ("`hccn_tool -i {0} -link_stat -g` gave no answer within 3 s and was killed; the driver or device hangs "
            "(check `dmesg` and /var/log/hccn_tool/, reset the device or reboot)")
    assert res["problems"] == [
        "device 0: " + hang.format(0), "device 1: " + hang.format(1),
        "hccn_tool: hccn_tool hangs on devices 0, 1 (command_timeout 3 s each); devices 2, 3, 4, 5, 6, 7 not "
        "checked; fix the driver (dmesg, /var/log/hccn_tool/), then run again"]
    assert [d["link"] for d in res["devices"]] == ["UP", "UP"]  # the check before the hang did run


def test_crash_junk_and_exit_zero_ping_text_are_one_line_each(host, run):
    scen = with_doc(host("tls_on.json"), faults=[
        {"args": "-link -g", "device": 5, "action": "crash"},  # TLS is 1 on device 5: it must stay untouched
        {"args": "-tls -g", "device": 1, "action": "junk", "bytes": 12},
        {"args": "-ping", "device": 2, "action": "output", "stdout": "device 2 PING 10.0.0.1\nping: unknown\n"},
        {"args": "-link_stat -g", "device": 3, "action": "output",
         "stdout": "[devid 3]current time        : Mon Oct 99 11:51:32 2025\n[devid 3]link up count       : 1\n"
                   "[devid 3]link down count     : 0\n[devid 3]link change records :\n"}])
    res = run(hccn_check, hccn(devices=[1, 2, 3, 5], ping_targets=["10.0.0.1"], fix_tls=True))
    assert res["problems"] == [
        "device 1: cannot parse the output of `hccn_tool -i 1 -tls -g` (expected 'tls switch[N]'), got: "
        "'\ufffd\ufffd\\x00\ufffdC\ufffd\ufffd\ufffd%C|\ufffd\ufffdgO'",
        "device 2: cannot parse the output of `hccn_tool -i 2 -ping -g address 10.0.0.1` (expected 'N packets "
        "transmitted, M received, L% packet loss'), got: 'device 2 PING 10.0.0.1 | ping: unknown'",
        "device 3: cannot parse the output of `hccn_tool -i 3 -link_stat -g` (expected a date in 'current time' "
        "(like 'Fri Sep  1 06:37:26 2023')), got: '[devid 3]current time        : Mon Oct 99 11:51:32 2025'",
        "device 5: `hccn_tool -i 5 -link -g` crashed (SIGSEGV), output: (empty output); check `dmesg` and the "
        "driver installation"]
    assert res["changed"] is False
    assert json.loads(scen.read_text())["devices"]["5"]["tls"] == 1


def test_old_driver_flap_detected_without_down_count(host, run):
    host("old_driver.json")
    res = run(hccn_check, hccn(checks=["link_stat"], fail_on_problem=False))
    flapping = [d["device"] for d in res["devices"] if d["flapping"]]
    assert flapping == [1]
    assert res["devices"][1]["link_down_count"] == 1
    assert res["problems"][0].startswith("device 1: link flapping: 1 LINK DOWN record(s) within 86400s")
    res = run(hccn_check, hccn(checks=["link_stat"], link_flap_window=600))
    assert res["problems"] == []  # the flap was an hour ago


def test_garbage_tool_output_is_a_clear_problem_not_a_traceback(run, tmp_path):
    tool = tmp_path / "hccn_tool"
    tool.write_text("#!/bin/sh\necho 'dsmi_get_device_info failed, ret = -8005'\nexit 0\n")
    tool.chmod(0o755)
    res = run(hccn_check, {"hccn_tool": str(tool), "devices": [0], "checks": ["link", "net_health"]})
    assert res["failed"] is True
    assert res["problems"] == [
        "device 0: cannot parse the output of `hccn_tool -i 0 -link -g` (expected 'link status: UP|DOWN'), got: "
        "'dsmi_get_device_info failed, ret = -8005'",
        "device 0: cannot parse the output of `hccn_tool -i 0 -net_health -g` (expected 'net health status: "
        "...'), got: 'dsmi_get_device_info failed, ret = -8005'"]


def test_a_device_that_does_not_exist_is_one_line(host, run):
    host("healthy_a2.json")
    res = run(hccn_check, hccn(devices=[7, 8]))
    assert res["problems"] == ["device 8: `hccn_tool -i 8 -link -g` failed (rc=4): 'Get invalid device id.'"]
    assert res["devices"][0]["problems"] == []


def test_tool_missing_and_bad_options(run, tmp_path):
    res = run(hccn_check, {"hccn_tool": str(tmp_path / "nope")})
    assert res["failed"] is True and res["msg"].startswith(f"hccn_tool not found or not executable at {tmp_path}")
    res = run(hccn_check, hccn(checks=["ping"]))
    assert res["msg"] == "checks contains 'ping' but ping_targets is empty; list the IPs to ping"
    res = run(hccn_check, hccn(ping_targets=["10.0.0.1", "node-b", "10.0.0.256"]))
    assert res["msg"] == ("ping_targets: 'node-b', '10.0.0.256' not IPv4 address(es); hccn_tool pings device IPs "
                          "such as 10.20.1.10")
    res = run(hccn_check, hccn(command_timeout=0))
    assert res["msg"] == "command_timeout must be at least 1 (seconds), got 0"


# ------------------------------------------------------------------ npu_topology


def test_topology_a2_fixture_with_conf(host, run):
    host("a2_fixture.json")
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi"), "hccn_conf": str(CAPTURES / "hccn.conf.a2_8")})
    assert (res["product"], res["driver_version"], res["healthy"]) == ("A2", "24.1.rc3", True)
    assert res["free_logic_ids"] == [2, 3, 4, 5]
    assert res["ansible_facts"]["npu"]["free_logic_ids"] == [2, 3, 4, 5]
    chip = res["chips"][0]
    assert chip == {"npu_id": 0, "chip_id": 0, "logic_id": 0, "phy_id": 0, "name": "910B4", "health": "OK",
                    "bus_id": "0000:C1:00.0", "aicore_pct": 0, "hbm_used_mb": 22283, "hbm_total_mb": 32768,
                    "processes": [{"pid": 582939, "name": "", "memory_mb": 19502}], "device_ip": "127.0.0.45",
                    "netmask": "255.255.0.0", "busy": True}
    assert res["problems"] == [] and res["changed"] is False


def test_topology_a3_and_judging_planned_logic_ids(host, run):
    host("a3_fixture.json")
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi"), "hccn_conf": "/nonexistent",
                             "logic_ids": [7, 8, 42], "require_free": True})
    assert res["product"] == "A3" and len(res["chips"]) == 16
    assert res["selected"] == [7, 8]
    assert res["problems"][0] == ("logic id 42: no such NPU on this host (npu-smi lists logic ids "
                                  + ", ".join(str(i) for i in range(16)) + ")")
    assert res["problems"][1] == ("device 8: busy (logic id 8): 1 process(es): pid 957687 pt_main_thread 49207 MB; "
                                  "HBM 52553/65536 MB in use; stop it or choose other devices")
    assert len(res["problems"]) == 2


def test_topology_npu_smi_failure_is_one_line(run, tmp_path):
    tool = tmp_path / "npu-smi"
    tool.write_text("#!/bin/sh\necho 'dcmi module initialize failed. ret is -8005'\nexit 187\n")
    tool.chmod(0o755)
    res = run(npu_topology, {"npu_smi": str(tool)})
    assert res["failed"] is True and res["rc"] == 187
    assert res["msg"] == ("`npu-smi info` failed (rc=187): 'dcmi module initialize failed. ret is -8005'; "
                          "is the Ascend driver loaded and are you root?")


def test_topology_refuses_duplicate_logic_ids_and_reports_na_hbm(host, run):
    scen = with_doc(host("healthy_a2.json"), devices={"4": {"logic_id": 3}})
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi"), "hccn_conf": "/nonexistent"})
    assert res["failed"] is True
    assert res["msg"] == (f"cannot parse the output of `{FAKES / 'npu-smi'} info -m` (expected each Chip Logic ID "
                          "once), got: 'Chip Logic ID 3 on both NPU 3 Chip 0 and NPU 4 Chip 0'")
    with_doc(scen, devices={"2": {"hbm_used_mb": "NA", "hbm_total_mb": "NA"}})
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi"), "hccn_conf": "/nonexistent", "require_free": True})
    chip = res["chips"][2]
    assert (chip["hbm_used_mb"], chip["hbm_total_mb"], chip["busy"]) == (None, None, False)
    assert res["free_logic_ids"] == [0, 1, 3, 4, 5, 6, 7]
    assert res["problems"] == ["device 2: npu-smi info prints HBM usage NA/NA (logic id 2), so nobody can tell "
                               "whether the chip is free; check `npu-smi info -t usages -i 2` or choose other devices"]


def test_topology_crash_and_hang_fail_with_one_line(host, run):
    scen = with_doc(host("healthy_a2.json"), faults=[{"tool": "npu-smi", "args": "info -l", "action": "crash"}])
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi")})
    assert res["msg"] == ("`npu-smi info -l` crashed (SIGSEGV), output: (empty output); check `dmesg` and the driver "
                          "installation")
    with_doc(scen, faults=[{"tool": "npu-smi", "args": "info", "action": "hang"}])
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi"), "command_timeout": 1})
    assert res["failed"] is True
    assert res["msg"] == ("`npu-smi info` gave no answer within 1 s and was killed; the driver or device hangs (check "
                          "`dmesg` and /var/log/hccn_tool/, reset the device or reboot)")


def test_topology_truncated_table_is_not_read_as_fewer_chips(host, run):
    with_doc(host("healthy_a2.json"), faults=[{"tool": "npu-smi", "args": "info", "action": "truncate",
                                               "bytes": 1200}])
    res = run(npu_topology, {"npu_smi": str(FAKES / "npu-smi")})
    assert res["failed"] is True
    assert res["msg"].startswith(f"cannot parse the output of `{FAKES / 'npu-smi'} info` (expected the whole table, "
                                 "process section included (output cut short?)), got: ")


def test_topology_garbage_table_is_one_line(run, tmp_path):
    tool = tmp_path / "npu-smi"
    tool.write_text("#!/bin/sh\necho 'Command or option is not found.'\n")
    tool.chmod(0o755)
    res = run(npu_topology, {"npu_smi": str(tool)})
    assert res["failed"] is True
    assert res["msg"].startswith(f"cannot parse the output of `{tool} info` (expected an npu-smi table")
    assert "Command or option is not found." in res["msg"]


def test_a_tool_that_cannot_start_is_one_line_per_device(run, tmp_path):
    tool = tmp_path / "hccn_tool"
    tool.write_text("#!/nonexistent/interpreter\n")  # exec fails: the kernel finds no interpreter
    tool.chmod(0o755)
    res = run(hccn_check, {"hccn_tool": str(tool), "hccn_conf": "/nonexistent", "devices": [0, 1]})
    assert res["problems"] == [f"device {d}: `hccn_tool -i {d} -link -g` could not be started: No such file or "
                               "directory; check the tool's path and permissions" for d in (0, 1)]


def test_a_lock_held_by_a_stuck_call_is_not_waited_for_forever(host, run):
    host("healthy_a2.json")
    tool = str(FAKES / "hccn_tool")
    runner = ascend_tool.ToolRunner(module=None, timeout=1)
    fd = os.open(runner.lock_path(tool), os.O_CREAT | os.O_WRONLY, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a hung call of another run would hold it
    try:
        res = run(hccn_check, hccn(devices=[0], command_timeout=1))
    finally:
        os.close(fd)
    assert res["problems"] == ["device 0: `hccn_tool -i 0 -link -g` did not run: another call of this collection held "
                               "the tool's lock for 2 s (a hung hccn_tool/npu-smi, see `ps -ef`, or a parallel run); "
                               "run again"]
