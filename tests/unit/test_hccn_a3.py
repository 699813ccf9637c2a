"""A3 formats (hccs_ping, vnic) and the vendor-guide checks (lldp, netdetect, gateway): parsers and module.

The texts below follow the format strings of hccn_tool's own source (tool_ping_printf, tool_vnic_cmd_execute,
"netdetect addr: %s", "default gateway:%s, Iface:eth%d") and the documented samples
(/work/shared/reference/ascend-tools.md 1.5b, 1.8-1.10); the fake prints the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils import hccn_parse as hp
from ansible_collections.openfuyao.pd.plugins.modules import hccn_check

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SCENARIOS = FAKES / "scenarios"

HCCS_OK = (
    "device 1 PING 192.1.3.198\n\n"
    "This pkt ping success!\nrecv seq 0, time = 9.037us, L1 plane check result = 0x0\n\n"
    "This pkt ping success!\nrecv seq 1, time = 9.768us, L1 plane check result = 0x0\n\n"
    "This pkt ping success!\nrecv seq 2, time = 10.499us, L1 plane check result = 0x0\n\n"
    "3 packets transmitted, 3 received, 0.00% packets loss\n"
    "max time 10.499us\nmin time 9.037us\naverage time 9.768us\nTP95 time 10.499us\n")
HCCS_LOSS = (
    "device 0 PING 192.1.2.199\n\n"
    "This pkt ping success!\nrecv seq 0, time = 12.480us, L1 plane check result = 0x0\n\n"
    "This pkt check recv msg fail!\nrecv seq 1, time = 0.000us, L1 plane check result = 0x0\n\n"
    "This pkt send fail!\nrecv seq 2, time = 0.000us, L1 plane check result = 0x0\n\n"
    "3 packets transmitted, 1 received, 66.67% packets loss\n"
    "max time 12.480us\nmin time 12.480us\naverage time 12.480us\nTP95 time 12.480us\n")


# ------------------------------------------------------------------------------- parsers


def test_hccs_ping_success_microseconds_and_per_packet_lines():
    got = hp.parse_hccs_ping(HCCS_OK, "192.1.3.198")
    assert (got["transmitted"], got["received"], got["loss_pct"], got["ok"]) == (3, 3, 0.0, True)
    assert [p["time_us"] for p in got["packets"]] == [9.037, 9.768, 10.499]
    assert {p["result"] for p in got["packets"]} == {"ping success"}
    assert (got["max_us"], got["average_us"], got["tp95_us"]) == (10.499, 9.768, 10.499)


def test_hccs_ping_loss_is_read_from_the_text_not_the_exit_code():
    got = hp.parse_hccs_ping(HCCS_LOSS, "192.1.2.199")
    assert (got["received"], got["loss_pct"], got["ok"]) == (1, 66.67, False)
    assert [p["result"] for p in got["packets"]] == ["ping success", "check recv msg fail", "send fail"]


@pytest.mark.parametrize("text, expected", [
    (HCCS_OK.replace("device 1 PING 192.1.3.198", ""), "'device N PING IP'"),
    # a summary that claims more than the per-packet lines show is not believed
    (HCCS_LOSS.replace("1 received, 66.67%", "3 received, 0.00%"), "as many 'This pkt ping success!' lines"),
    (HCCS_OK.replace("This pkt ping success!\nrecv seq 2, time = 10.499us, L1 plane check result = 0x0\n", ""),
     "3 packet result(s)"),
    (HCCS_OK.replace("3 received", "4 received"), "received <= transmitted"),
    ("", "'device N PING IP'"),
])
def test_hccs_ping_bad_text_is_a_parse_error_naming_the_command(text, expected):
    with pytest.raises(hp.ParseError) as err:
        hp.parse_hccs_ping(text, "192.1.3.198", "hccn_tool -i 1 -hccs_ping -g address 192.1.3.198")
    assert "`hccn_tool -i 1 -hccs_ping -g address 192.1.3.198`" in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_vnic_documented_sample_and_bad_address():
    sample = "vnic link status: UP\nvnic ipaddr: 192.168.2.199\nvnic netmask: 255.255.255.0\n"
    assert hp.parse_vnic(sample) == {"link": "UP", "ipaddr": "192.168.2.199", "netmask": "255.255.255.0"}
    assert hp.parse_vnic(sample.replace("UP", "DOWN"))["link"] == "DOWN"
    for bad in (sample.replace("192.168.2.199", "*.*.*.*"), "ipaddr:10.0.0.1\nnetmask:255.255.255.0\n"):
        with pytest.raises(hp.ParseError):
            hp.parse_vnic(bad)


def test_netdetect_source_and_lenient_doc_forms():
    assert hp.parse_netdetect("netdetect addr: 11.12.165.1\n") == "11.12.165.1"
    assert hp.parse_netdetect("netdetect address: 11.12.165.1\n") == "11.12.165.1"
    assert hp.parse_netdetect("netdetect addr: 0.0.0.0\n") is None
    with pytest.raises(hp.ParseError):
        hp.parse_netdetect("netdetect addr: 11.12.165.300\n")


def test_gateway_sample_and_none_set():
    assert hp.parse_gateway("default gateway:11.12.165.1, Iface:eth3\n") == {"gateway": "11.12.165.1", "iface": "eth3"}
    assert hp.parse_gateway("", "Get gateway failed, because no gateway was preset there!\n") is None
    with pytest.raises(hp.ParseError):
        hp.parse_gateway("gateway: 11.12.165.1\n")


def test_lldp_tlv_dump_grep_form_and_empty():
    dump = ("Chassis ID TLV\n\tMAC: 18:cf:24:3c:72:c1\nPort ID TLV\n\tIfname: 400GE1/1/5:1\nTime to Live TLV\n\t120\n"
            "System Name TLV\n\tLeaf-SW-01\nSystem Description TLV\n\tHuawei Versatile Routing Platform Software\n"
            "End of LLDPDU TLV\n")
    got = hp.parse_lldp(dump)
    assert (got["ifname"], got["system_name"], got["chassis_id"]) == ("400GE1/1/5:1", "Leaf-SW-01",
                                                                       "MAC: 18:cf:24:3c:72:c1")
    assert hp.parse_lldp("\tIfname: 400GE1/2/5:1\n")["ifname"] == "400GE1/2/5:1"
    assert hp.parse_lldp("") is None
    with pytest.raises(hp.ParseError):
        hp.parse_lldp("lldp is not running\n")


def test_not_supported_marker():
    assert hp.is_not_supported("The command is not supported on this product.\n")
    assert not hp.is_not_supported(HCCS_OK)


# ------------------------------------------------------------------------------- fake = documented bytes


def fake(scen: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAKES / "hccn_tool"), *args], env={**os.environ, "PD_FAKE_NPU_SCENARIO": str(scen)},
                          capture_output=True, text=True, check=False)


def scenario(tmp_path: Path, name: str, **changes) -> Path:
    doc = json.loads((SCENARIOS / name).read_text())
    doc.update(changes)
    dest = tmp_path / name
    dest.write_text(json.dumps(doc))
    return dest


def test_fake_hccs_ping_prints_the_source_layout(tmp_path):
    scen = scenario(tmp_path, "healthy_a3.json", server_id=1)
    proc = fake(scen, "-i", "1", "-hccs_ping", "-g", "address", "192.1.3.198")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, HCCS_OK, "")
    vnic = fake(scen, "-i", "3", "-vnic", "-g")
    assert vnic.stdout == "vnic link status: UP\nvnic ipaddr: 192.1.3.196\nvnic netmask: 255.255.255.0\n"


def test_fake_hccs_ping_loss_exits_0_and_a2_says_not_supported(tmp_path):
    scen = scenario(tmp_path, "healthy_a3.json", hccs_ping_unreachable=["192.1.2.199"])
    proc = fake(scen, "-i", "0", "-hccs_ping", "-g", "address", "192.1.2.199", "cnt", "2")
    assert proc.returncode == 0
    assert "2 packets transmitted, 0 received, 100.00% packets loss\n" in proc.stdout
    assert proc.stdout.count("This pkt check recv msg fail!") == 2
    a2 = fake(scenario(tmp_path, "healthy_a2.json"), "-i", "0", "-hccs_ping", "-g", "address", "192.1.2.199")
    assert (a2.returncode, a2.stdout) == (13, "The command is not supported on this product.\n")


# ------------------------------------------------------------------------------- module


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    def call(name: str, args: dict, check_mode: bool = False, **changes) -> dict:
        monkeypatch.setenv("PD_FAKE_NPU_SCENARIO", str(scenario(tmp_path, name, **changes)))
        args = {"hccn_tool": str(FAKES / "hccn_tool"), "hccn_conf": "/nonexistent/hccn.conf", **args}
        if check_mode:
            args["_ansible_check_mode"] = True
        with patch_module_args(args), pytest.raises(SystemExit):
            hccn_check.main()
        return json.loads(capsys.readouterr().out)
    return call


PEERS = ["192.1.2.199", "192.1.3.198"]  # dies 0 and 1 of the peer server (server id 1)


def test_a3_vnic_hccs_ping_lldp_netdetect_gateway_pass(run):
    res = run("healthy_a3.json", {"devices": [0, 1], "checks": ["ip", "vnic", "lldp", "netdetect", "gateway",
                                                                 "hccs_ping"], "hccs_ping_targets": PEERS})
    assert res["problems"] == [] and res.get("failed") is not True
    dev = res["devices"][1]
    assert (dev["vnic_link"], dev["vnic_ip"], dev["netdetect"], dev["gateway"]) == (
        "UP", "192.0.3.198", "10.21.0.1", "10.21.0.1")
    assert dev["lldp"]["ifname"] == "400GE1/1/2:1"
    assert [(p["target"], p["ok"], len(p["packets"])) for p in dev["hccs_ping"]] == [(t, True, 3) for t in PEERS]
    assert res["msg"] == "hccn_check: 2 device(s) passed ip, vnic, lldp, netdetect, gateway, hccs_ping"


def test_hccs_ping_and_vnic_on_a2_are_a_clear_skip(run):
    res = run("healthy_a2.json", {"devices": [0], "checks": ["vnic", "hccs_ping"], "hccs_ping_targets": PEERS})
    assert res["problems"] == [] and res.get("failed") is not True
    assert res["devices"][0]["skipped"] == [
        "vnic: not supported on this product (A3 super-node only), skipped",
        "hccs_ping: not supported on this product (A3 super-node only), skipped"]
    assert "n/a" in res["table"][1].split()


def test_one_die_losing_packets_is_one_line_naming_device_and_command(run):
    res = run("a3_hccs_loss.json", {"devices": [0, 1, 2], "hccs_ping_targets": ["192.2.2.199", "192.2.3.198"],
                                    "checks": ["hccs_ping"], "fail_on_problem": False})
    assert res["problems"] == [
        "device 2: hccs_ping 192.2.3.198: 2 of 3 packets received (33.33% packets loss) (`hccn_tool -i 2 -hccs_ping "
        "-g address 192.2.3.198 cnt 3`); check this die's and the peer die's HCCS links (npu-smi info -t hccs)"]
    lossy = next(p for p in res["devices"][2]["hccs_ping"] if not p["ok"])
    assert [p["result"] for p in lossy["packets"]] == ["ping success", "ping success", "check recv msg fail"]


def test_a_peer_die_no_device_reaches_is_one_host_line(run):
    res = run("healthy_a3.json", {"devices": [0, 1, 2, 3], "hccs_ping_targets": PEERS, "hccs_ping_count": 2},
              hccs_ping_unreachable=["192.1.2.199"])
    assert res["failed"] is True
    assert res["problems"] == [
        "hccs_ping 192.1.2.199: no answer to any of devices 0, 1, 2, 3 (device 0: hccs_ping 192.1.2.199: 0 of 2 "
        "packets received (100.00% packets loss) (`hccn_tool -i 0 -hccs_ping -g address 192.1.2.199 cnt 2`)); the "
        "die that owns vNIC 192.1.2.199 or its HCCS link is down: check it with `hccn_tool -i N -vnic -g` and "
        "`npu-smi info -t hccs` on its host"]


def test_vnic_down_netdetect_unset_gateway_missing_and_outside_subnet(run):
    res = run("healthy_a3.json", {"devices": [0, 1, 2, 4], "checks": ["ip", "vnic", "netdetect", "gateway", "lldp"],
                                  "fail_on_problem": False},
              devices={"0": {"vnic_link": "DOWN"}, "1": {"netdetect": None}, "2": {"gateway": None},
                       "4": {"gateway": "10.99.0.1", "lldp": None}})
    assert res["problems"] == [
        "device 0: vNIC link is DOWN (hccn_tool -i 0 -vnic -g); this die cannot reach its super-node peers over HCCS: "
        "check `npu-smi info -t hccs` and the super-node cabling",
        "device 1: no net-detect address set (hccn_tool -i 1 -netdetect -g), so net health cannot probe; set "
        "netdetect_1 in /nonexistent/hccn.conf, then run `hccn_tool -i 1 -cfg recovery`",
        "device 2: no default gateway set (hccn_tool -i 2 -gateway -g); set gateway_2 in /nonexistent/hccn.conf, then "
        "run `hccn_tool -i 2 -cfg recovery`",
        "device 4: no LLDP neighbour (hccn_tool -i 4 -lldp -g printed nothing); the switch port is down, not split as "
        "planned (e.g. 400GE as 2x200GE) or has LLDP off",
        "device 4: default gateway 10.99.0.1 is outside the device's subnet 10.21.0.0/17; fix gateway_4 or "
        "address_4/netmask_4 in /nonexistent/hccn.conf"]


def test_conf_mismatch_and_check_mode(run, tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=10.21.0.10\nnetdetect_0=10.21.0.254\ngateway_0=10.21.0.1\n")
    res = run("healthy_a3.json", {"devices": [0], "checks": ["netdetect", "gateway"], "hccn_conf": str(conf),
                                  "fail_on_problem": False}, check_mode=True)
    assert res["changed"] is False
    assert res["problems"] == [f"device 0: net-detect address 10.21.0.1 differs from netdetect_0=10.21.0.254 in {conf}; "
                               "fix the file or run `hccn_tool -i 0 -cfg recovery`"]


def test_hccs_options_are_checked(run):
    res = run("healthy_a3.json", {"checks": ["hccs_ping"]})
    assert res["msg"] == "checks contains 'hccs_ping' but hccs_ping_targets is empty; list the IPs to ping"
    res = run("healthy_a3.json", {"hccs_ping_targets": ["die-7"]})
    assert res["msg"] == "hccs_ping_targets: 'die-7' not IPv4 address(es); hccs_ping pings vNIC IPs such as 192.1.2.199"
    res = run("healthy_a3.json", {"hccs_ping_targets": PEERS, "hccs_ping_count": 0})
    assert res["msg"] == "hccs_ping_count must be within 1..1000 (what hccn_tool accepts), got 0"


def test_hccs_ping_tool_errors_are_one_line_with_excerpt(run):
    fault = {"args": "-hccs_ping", "device": 1, "action": "output", "rc": 31,
             "stdout": "The device is occupied. Please try again later.\n"}
    res = run("healthy_a3.json", {"devices": [0, 1], "hccs_ping_targets": PEERS[:1], "checks": ["hccs_ping"],
                                  "fail_on_problem": False}, faults=[fault])
    assert res["problems"] == [
        "device 1: `hccn_tool -i 1 -hccs_ping -g address 192.1.2.199 cnt 3` failed (rc=31): 'The device is occupied. "
        "Please try again later.'"]
