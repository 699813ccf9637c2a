"""playbooks/preflight.yml for real (ansible-playbook, connection local) against the fake NPU tools.

Every inventory host is this machine; each gets its own fake `hccn_tool`/`npu-smi` (wrappers that
point the fake at the host's scenario file) and its own hccn.conf, so one run checks several
"servers" at once, ping mesh included. The JSON report is the oracle: each faulty host must carry
exactly the one expected problem line, and the healthy ones none.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
SCENARIOS = FAKES / "scenarios"
PLAYBOOK = REPO / "playbooks" / "preflight.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def make_npu_host(root: Path, name: str, scenario: str, ip_prefix: str, **overrides) -> dict:
    """Scenario copy, fake-tool wrappers and hccn.conf for one simulated server; returns its host vars."""
    hdir = root / name
    (hdir / "bin").mkdir(parents=True)
    doc = json.loads((SCENARIOS / scenario).read_text())
    doc["ip_prefix"] = ip_prefix
    doc.update(overrides)
    scen = hdir / "scenario.json"
    scen.write_text(json.dumps(doc))
    for tool in ("hccn_tool", "npu-smi"):
        wrapper = hdir / "bin" / tool
        wrapper.write_text(f'#!/bin/sh\nPD_FAKE_NPU_SCENARIO={scen} exec {FAKES / tool} "$@"\n')
        wrapper.chmod(0o755)
    conf = subprocess.run([str(FAKES / "fake_npu_tool"), "hccn-conf"], env={**os.environ, "PD_FAKE_NPU_SCENARIO": str(scen)},
                          capture_output=True, text=True, check=True).stdout
    (hdir / "hccn.conf").write_text(conf)
    return {
        "pd_platform": "ascend",
        "preflight_hccn_tool": str(hdir / "bin" / "hccn_tool"),
        "preflight_npu_smi": str(hdir / "bin" / "npu-smi"),
        "preflight_hccn_conf": str(hdir / "hccn.conf"),
    }


def scenario_doc(root: Path, name: str) -> dict:
    return json.loads((root / name / "scenario.json").read_text())


def run_preflight(root: Path, hosts: dict, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = root / "report.json"
    report.unlink(missing_ok=True)
    inventory = {"all": {
        "vars": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "preflight_report_path": str(report),
            "preflight_disk_path": str(root),
            "preflight_disk_min_free_gb": 1,
        },
        "hosts": hosts,
    }}
    inv = root / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORKS": "8"}
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inv), str(PLAYBOOK), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(report.read_text())


def host_problems(report: dict, host: str) -> list[str]:
    return [p for p in report["problems"] if p.startswith(host + ": ")]


def checks_of(report: dict, host: str) -> dict[str, dict]:
    entry = next(e for e in report["hosts"] if e["host"] == host)
    return {c["check"]: c for c in entry["checks"]}


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "version"], capture_output=True, timeout=60, check=False).returncode == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------- faults in one run

# flapping.json puts its LINK DOWN 602 s before the device clock; pin that clock so the stamp is known.
FLAP_NOW = "Mon Oct 27 11:51:32 2025"
FLAP_DOWN = "Mon Oct 27 11:41:30 2025"

EXPECTED = {
    "linkdown": "linkdown: device 3: link status is DOWN; check the cable, optics and switch port "
                "(hccn_tool -i 3 -link -g)",
    "flapping": "flapping: device 2: link flapping: 1 LINK DOWN record(s) within 86400s, latest {stamp}; check "
                "the cable, optics and switch port, then clear the history with `hccn_tool -i 2 -link_stat -c`",
    "tlson": "tlson: device 5: TLS switch is 1 but must be 0 on every device (HCCL refuses mixed TLS settings); "
             "run with fix_tls=true or `hccn_tool -i 5 -tls -s enable 0`",
    "pingloss": "pingloss: device 4: ping 10.20.0.10: 0 of 3 packets received (100.00% loss); check the route, "
                "VLAN and switch between this device and 10.20.0.10",
    "noip": "noip: device 6: no IP address configured; set address_6 and netmask_6 in {conf}, then run "
            "`hccn_tool -i 6 -cfg recovery`",
    "busychip": "busychip: device 1: busy (logic id 1): 1 process(es): pid 4242 python3 20480 MB; HBM 23301/32768 MB "
                "in use; stop it or choose other devices",
    "nostorage": "nostorage: storage: {path} is not a mount point; mount the shared storage there (e.g. `mount -t "
                 "nfs SERVER:/export {path}`) or set preflight_storage_mount_command",
    "badplatform": 'badplatform: pd_platform: "npu" is not one of ascend, cuda, cpu; fix the inventory',
    "noengine": "noengine: container runtime: podman not found; install it or set pd_runtime: host",
    "mountfail": "mountfail: storage: {path} is not a mount point and `/bin/false` failed: non-zero return code",
    "portbusy": "portbusy: ports: {port} (test http) already in use; stop what listens there or change the ports "
                "in the inventory/plan",
}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    busy_port = listener.getsockname()[1]
    storage = root / "mnt-shared"
    storage.mkdir()
    hosts = {
        "healthy": make_npu_host(root, "healthy", "healthy_a2.json", "10.20.0."),
        "linkdown": make_npu_host(root, "linkdown", "link_down.json", "10.20.1."),
        "flapping": make_npu_host(root, "flapping", "flapping.json", "10.20.2.", current_time=FLAP_NOW),
        "tlson": make_npu_host(root, "tlson", "tls_on.json", "10.20.3."),
        "pingloss": make_npu_host(root, "pingloss", "ping_loss.json", "10.20.4."),
        "noip": make_npu_host(root, "noip", "missing_ip.json", "10.20.5."),
        "busychip": make_npu_host(root, "busychip", "busy_chip.json", "10.20.6."),
        "nostorage": {"pd_platform": "cpu", "preflight_storage_path": str(storage)},
        "badplatform": {"pd_platform": "npu"},
        "noengine": {"pd_runtime": "container", "preflight_container_engine": "podman"},
        "mountfail": {"preflight_storage_path": str(storage), "preflight_storage_mount_command": ["/bin/false"]},
        "portbusy": {"preflight_ports": [{"start": busy_port, "end": busy_port, "purpose": "test http"}]},
    }
    # Pinging is the slow part of the fakes; three hosts run the mesh (the healthy one, the one with the
    # lossy port, the one with a dead port), the others only publish their sound device IPs as targets.
    for name in ("flapping", "tlson", "noip", "busychip"):
        hosts[name]["preflight_ping_mesh"] = False
    try:
        proc, report = run_preflight(root, hosts)
    finally:
        listener.close()
    expected = {h: line.format(stamp=FLAP_DOWN, conf=root / "noip" / "hccn.conf", path=storage, port=busy_port)
                for h, line in EXPECTED.items()}
    return proc, report, expected, root


@pytest.mark.parametrize("host", sorted(EXPECTED))
def test_each_fault_gives_exactly_its_one_line(fault_run, host):
    proc, report, expected = fault_run[:3]
    assert host_problems(report, host) == [expected[host]]
    assert expected[host] in proc.stdout  # the failure message lists it verbatim


def test_fault_run_fails_and_healthy_host_is_clean(fault_run):
    proc, report, expected = fault_run[:3]
    assert proc.returncode == 2
    assert report["passed"] is False
    assert host_problems(report, "healthy") == []
    assert sorted(report["problems"]) == sorted(expected.values())
    assert "Traceback" not in proc.stdout + proc.stderr


def test_ping_mesh_targets_one_sound_device_per_peer(fault_run):
    report = fault_run[1]
    detail = checks_of(report, "healthy")["ping mesh"]["detail"]
    targets = detail.split(": ", 1)[1].split(", ")
    # one per NPU peer (6), each peer's first device with link up and an address; the cpu hosts have none
    assert sorted(targets) == sorted(f"10.20.{n}.10" for n in range(1, 7))
    assert detail.startswith("8 device(s) x 6 target(s)")
    # link-down device 3 of linkdown does not ping (its failure is reported once, by link)
    assert checks_of(report, "linkdown")["ping mesh"]["detail"].startswith("7 device(s)")


def test_non_ascend_hosts_skip_npu_checks_with_a_note(fault_run):
    report = fault_run[1]
    npu = checks_of(report, "nostorage")["npu"]
    assert npu["status"] == "skip"
    assert "platform is cpu, not ascend" in npu["detail"]


def test_preflight_never_changed_tls_without_fix_tls(fault_run):
    root = fault_run[3]
    assert scenario_doc(root, "tlson")["devices"]["5"]["tls"] == 1


# ------------------------------------------------------------------------------- healthy cluster


def test_healthy_cluster_passes(tmp_path):
    port = free_port()
    hosts = {
        "a2": make_npu_host(tmp_path, "a2", "healthy_a2.json", "10.30.0."),
        # its own P2P group: A2 and A3 in one group are refused (test_a2_and_a3_in_one_p2p_group_is_one_line)
        "a3": {**make_npu_host(tmp_path, "a3", "healthy_a3.json", "10.31.0."), "preflight_p2p_group": "pod-a3"},
        "busytool": make_npu_host(tmp_path, "busytool", "hccn_busy.json", "10.32.0."),
        "olddriver": make_npu_host(tmp_path, "olddriver", "old_driver.json", "10.33.0.",
                                   devices={"1": {"link_records": [{"ago": 200000, "state": "UP"},
                                                                   {"ago": 200100, "state": "DOWN"}]}}),
        "cpu": {"preflight_storage_path": "/proc", "preflight_storage_fstype": "proc",
                "pd_runtime": "container" if docker_answers() else "host",
                "preflight_ports": [{"start": port, "end": port + 1, "purpose": "proxy"}]},
    }
    proc, report = run_preflight(tmp_path, hosts)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert report["passed"] is True and report["problems"] == []
    a3 = checks_of(report, "a3")
    assert a3["npu topology"]["detail"].startswith("A3, driver 24.1.rc3.3: 16 chip(s), 16 free")
    assert a3["npu devices"]["detail"] == "hccn_check: 16 device(s) passed link, link_stat, tls, ip, net_health, vnic"
    assert a3["hccs mesh"]["status"] == "skip"  # no other A3 host in its group
    assert sorted(a3["ping mesh"]["detail"].split(": ", 1)[1].split(", ")) == [
        "10.30.0.10", "10.32.0.10", "10.33.0.10"]
    # the busy answers were retried away, one after another
    assert scenario_doc(tmp_path, "busytool")["hccn_busy_responses"] == 0
    cpu = checks_of(report, "cpu")
    assert cpu["storage"]["status"] == "pass" and "/proc mounted (proc" in cpu["storage"]["detail"]
    assert cpu["ports"]["status"] == "pass"
    if docker_answers():  # the test machines run a docker engine; elsewhere the runtime check is not asserted
        assert cpu["container runtime"]["status"] == "pass"
    assert cpu["npu"]["status"] == "skip"
    assert "PASSED: 5 host(s) fit for PD" in proc.stdout


# ------------------------------------------------------------------------------- TLS fix


def test_fix_tls_check_mode_then_fix_then_clean_second_run(tmp_path):
    hosts = {"tlson": {**make_npu_host(tmp_path, "tlson", "tls_on.json", "10.40.0."), "preflight_npu_devices": [4, 5]}}
    proc, report = run_preflight(tmp_path, hosts, "--check", "-e", "preflight_fix_tls=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert scenario_doc(tmp_path, "tlson")["devices"]["5"]["tls"] == 1  # check mode changed nothing

    proc, report = run_preflight(tmp_path, hosts, "-e", "preflight_fix_tls=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["passed"] is True
    assert scenario_doc(tmp_path, "tlson")["devices"]["5"]["tls"] == 0
    assert "changed=1" in proc.stdout

    proc, report = run_preflight(tmp_path, hosts)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["passed"] is True
    assert "changed=0" in proc.stdout


# ------------------------------------------------------------------------------- with a plan


def test_plan_decides_platform_devices_ports_and_ping_targets(tmp_path):
    """With the fact pd_plan, preflight checks exactly what the plan will use on each host."""
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    host = make_npu_host(tmp_path, "npu1", "busy_chip.json", "10.50.0.")
    del host["pd_platform"]  # the plan says ascend; the inventory default would be cpu
    plan = {"pd_plan": {"schema_version": 1, "hosts": {"npu1": {
        "platform": "ascend", "runtime": "host", "instances": ["prefill-0"],
        "devices": [1, 2],  # logic ids; NPU 1 is busy in this scenario
        "ports": [{"start": port, "end": port, "purpose": "prefill-0 http"}],
        "ping_targets": ["10.50.9.9"]}}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    try:
        proc, report = run_preflight(tmp_path, {"npu1": host}, "-e", f"@{tmp_path / 'plan.json'}")
    finally:
        listener.close()
    assert proc.returncode == 2
    assert report["problems"] == [
        "npu1: device 1: busy (logic id 1): 1 process(es): pid 4242 python3 20480 MB; HBM 23301/32768 MB in use; "
        "stop it or choose other devices",
        f"npu1: ports: {port} (prefill-0 http) already in use; stop what listens there or change the ports in the "
        "inventory/plan"]
    checks = checks_of(report, "npu1")
    assert checks["npu devices"]["detail"] == "hccn_check: 2 device(s) passed link, link_stat, tls, ip, net_health"
    assert checks["ping mesh"]["detail"] == "2 device(s) x 1 target(s): 10.50.9.9"


# ------------------------------------------------------------------------------- broken tools

# One broken behaviour of the tools per host (tests/fakes "faults", docs/fake-npu.md). Each host must carry
# exactly its one line, the run must write nothing to any device (fix_tls is on and every device whose
# reading breaks has TLS 1), and the report must still be written.
JUNK_TLS = "'\ufffd\ufffd\\x00\ufffdC\ufffd\ufffd\ufffd%C|\ufffd\ufffdgO'"
BAD_STAMP = ("[devid 5]current time        : Mon Oct 99 11:51:32 2025\n[devid 5]link up count       : 1\n"
             "[devid 5]link down count     : 0\n[devid 5]link change records :\n"
             "[devid 5]    Sat Oct 25 11:51:32 2025    LINK UP\n")
BROKEN = {  # host: (scenario overrides, expected line)
    "crash": ({"faults": [{"args": "-link -g", "device": 2, "action": "crash"}], "devices": {"2": {"tls": 1}}},
              "crash: device 2: `hccn_tool -i 2 -link -g` crashed (SIGSEGV), output: (empty output); check `dmesg` "
              "and the driver installation"),
    "hang": ({"faults": [{"args": "-tls -g", "device": 4, "action": "hang"}], "devices": {"4": {"tls": 1}}},
             "hang: device 4: `hccn_tool -i 4 -tls -g` gave no answer within 5 s and was killed; the driver or device "
             "hangs (check `dmesg` and /var/log/hccn_tool/, reset the device or reboot)"),
    "junk": ({"faults": [{"args": "-tls -g", "device": 1, "action": "junk", "bytes": 12}], "devices": {"1": {"tls": 1}}},
             "junk: device 1: cannot parse the output of `hccn_tool -i 1 -tls -g` (expected 'tls switch[N]'), got: "
             + JUNK_TLS),
    "busy": ({"hccn_busy_responses": 10**6, "devices": {"0": {"tls": 1}}},
             "busy: hccn_tool: `hccn_tool -i 0 -link -g` still answers 'hccn_tool is busy' after 2 s of retries "
             "(busy_budget); devices 0, 1, 2, 3, 4, 5, 6, 7 not checked; stop other hccn_tool users on this host and "
             "run again"),
    "pingtext": ({"faults": [{"args": "-ping", "device": 0, "action": "output",
                              "stdout": "device 0 PING 10.60.99.1\nping: sendmsg: unknown error\n"}]},
                 "pingtext: device 0: cannot parse the output of `hccn_tool -i 0 -ping -g address 10.60.99.1` "
                 "(expected 'N packets transmitted, M received, L% packet loss'), got: 'device 0 PING 10.60.99.1 | "
                 "ping: sendmsg: unknown error'"),
    "badstamp": ({"faults": [{"args": "-link_stat -g", "device": 5, "action": "output", "stdout": BAD_STAMP}]},
                 "badstamp: device 5: cannot parse the output of `hccn_tool -i 5 -link_stat -g` (expected a date in "
                 "'current time' (like 'Fri Sep  1 06:37:26 2023')), got: '[devid 5]current time        : Mon Oct 99 "
                 "11:51:32 2025'"),
    "badip": ({"faults": [{"args": "-ip -g", "device": 3, "action": "output",
                           "stdout": "ipaddr:10.60.12.999\nnetmask:255.255.255.0\n"}]},
              "badip: device 3: cannot parse the output of `hccn_tool -i 3 -ip -g` (expected 'ipaddr:A.B.C.D' and "
              "'netmask:A.B.C.D' with valid IPv4 addresses), got: 'ipaddr:10.60.12.999 | netmask:255.255.255.0'"),
    "garbage": ({"faults": [{"args": "-net_health -g", "device": 6, "action": "output", "rc": 3,
                             "stderr": "dsmi_get_netdev_health failed, ret = -9999\n\x1b[31mERR\x1b[0m\n"}]},
                "garbage: device 6: `hccn_tool -i 6 -net_health -g` failed (rc=3): 'dsmi_get_netdev_health failed, "
                "ret = -9999 | \\x1b[31mERR\\x1b[0m'"),
    "duplogic": ({"devices": {"4": {"logic_id": 3}}},
                 "duplogic: npu: npu_topology failed: cannot parse the output of `{root}/duplogic/bin/npu-smi info -m` "
                 "(expected each Chip Logic ID once), got: 'Chip Logic ID 3 on both NPU 3 Chip 0 and NPU 4 Chip 0'"),
    "nahbm": ({"devices": {"2": {"hbm_used_mb": "NA", "hbm_total_mb": "NA"}}},
              "nahbm: device 2: npu-smi info prints HBM usage NA/NA (logic id 2), so nobody can tell whether the chip "
              "is free; check `npu-smi info -t usages -i 2` or choose other devices"),
    "truncated": ({"faults": [{"tool": "npu-smi", "args": "info", "action": "truncate", "bytes": 1200}]},
                  "truncated: npu: npu_topology failed: cannot parse the output of `{root}/truncated/bin/npu-smi info` "
                  "(expected the whole table, process section included (output cut short?)), got: 'where it stops: "
                  "| 2     910B'"),
    "npucrash": ({"faults": [{"tool": "npu-smi", "args": "info -l", "action": "crash"}]},
                 "npucrash: npu: npu_topology failed: `npu-smi info -l` crashed (SIGSEGV), output: (empty output); "
                 "check `dmesg` and the driver installation"),
}
# Not the tools but the modules themselves die (the host's Python interpreter crashes): each module's task is one
# line (npu_topology, then pd_host_probe); and inventory ports that bind() cannot try.
CRASHING_PYTHON = "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'MemoryError: out of memory' >&2\nexit 1\n"
BROKEN_OTHER = {
    "pycrash": ["pycrash: npu: npu_topology failed: Module result deserialization failed: No start of json char found "
                "(module stderr: MemoryError: out of memory)",
                'pycrash: preflight task "Read the probe\'s result" failed: Module result '
                "deserialization failed: No start of json char found (module stderr: MemoryError: out of memory)"],
    # hccn_check refuses a ping target that is no IPv4 address: the ping mesh is one line, the host checks still run
    "badtarget": ["badtarget: ping: hccn_check failed: ping_targets: '10.60.99.300' not IPv4 address(es); hccn_tool "
                  "pings device IPs such as 10.20.1.10"],
    # (the inventory file is written with sorted keys)
    "badports": ['badports: ports: [{"end": 70000, "purpose": "x", "start": 70000}, {"end": 8999, "start": 9000}] must lie '
                 "within 1-65535 with end >= start; fix the inventory/plan"],
}
BROKEN_OPTIONS = ("-e", "preflight_fix_tls=true", "-e", "preflight_hccn_command_timeout=5",
                  "-e", "preflight_hccn_busy_budget=2")


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    hosts, before = {}, {}
    for index, (name, (overrides, _line)) in enumerate(BROKEN.items()):
        hosts[name] = make_npu_host(root, name, "healthy_a2.json", f"10.60.{index}.", call_log=str(root / name / "calls.log"),
                                    **overrides)
        hosts[name]["preflight_ping_mesh"] = False
        (root / name / "calls.log").write_text("")
        before[name] = scenario_doc(root, name)
    hosts["pingtext"]["preflight_ping_targets"] = ["10.60.99.1"]
    python = root / "crashing-python"
    python.write_text(CRASHING_PYTHON)
    python.chmod(0o755)
    hosts["pycrash"] = {**make_npu_host(root, "pycrash", "healthy_a2.json", "10.60.50."), "preflight_ping_mesh": False,
                        "ansible_python_interpreter": str(python)}
    hosts["badtarget"] = {**make_npu_host(root, "badtarget", "healthy_a2.json", "10.60.51."), "preflight_ping_mesh": False,
                          "preflight_ping_targets": ["10.60.99.300"]}
    hosts["badports"] = {"preflight_ports": [{"start": 70000, "end": 70000, "purpose": "x"}, {"start": 9000, "end": 8999}]}
    proc, report = run_preflight(root, hosts, *BROKEN_OPTIONS)
    return proc, report, root, before


@pytest.mark.parametrize("host", sorted(BROKEN))
def test_each_broken_tool_behaviour_gives_exactly_its_one_line(broken_run, host):
    proc, report, root = broken_run[:3]
    expected = BROKEN[host][1].format(root=root)
    assert host_problems(report, host) == [expected]
    assert expected in proc.stdout


@pytest.mark.parametrize("host", sorted(BROKEN))
def test_a_broken_tool_gets_nothing_written(broken_run, host):
    proc, _report, root, before = broken_run
    after = scenario_doc(root, host)
    if host == "busy":  # the fake counts its busy answers down; nothing else may change
        assert before[host].pop("hccn_busy_responses") - after.pop("hccn_busy_responses") > 0
    assert after == before[host]  # every TLS switch as it was, although fix_tls is on
    calls = (root / host / "calls.log").read_text().splitlines()
    assert calls and not [c for c in calls if " -s " in c]  # no set command was ever issued
    recap = next(line for line in proc.stdout.splitlines() if line.startswith(host + " ") and "ok=" in line)
    assert "changed=0" in recap


def test_broken_run_fails_once_with_every_line_and_writes_the_report(broken_run):
    proc, report, root = broken_run[:3]
    assert proc.returncode == 2
    assert sorted(report["problems"]) == sorted([line.format(root=root) for _o, line in BROKEN.values()]
                                                + [line for lines in BROKEN_OTHER.values() for line in lines])
    assert "Traceback" not in proc.stdout + proc.stderr
    topology = checks_of(report, "npucrash")["npu topology"]
    assert topology["status"] == "fail" and topology["detail"].startswith("`npu-smi info -l` crashed (SIGSEGV)")
    assert "npu devices" not in checks_of(report, "npucrash")  # nothing to check devices against


@pytest.mark.parametrize("host", sorted(BROKEN_OTHER))
def test_a_crashing_module_and_impossible_ports_are_one_line_each(broken_run, host):
    proc, report = broken_run[:2]
    assert host_problems(report, host) == BROKEN_OTHER[host]
    assert all(line in proc.stdout for line in BROKEN_OTHER[host])


def test_a_ping_mesh_whose_module_fails_is_its_own_check_and_the_host_checks_still_run(broken_run):
    report = broken_run[1]
    checks = checks_of(report, "badtarget")
    assert checks["ping mesh"]["status"] == "fail"
    assert checks["ping mesh"]["detail"].startswith("ping_targets: '10.60.99.300' not IPv4 address(es)")
    assert checks["npu devices"]["status"] == "pass"
    assert checks["disk"]["status"] == "pass"  # the checks after the ping mesh ran


def test_report_is_written_when_the_only_hosts_module_fails(tmp_path):
    """A fake npu-smi that crashes: npu_topology fails, the play still writes the table and the JSON report."""
    hosts = {"npu1": make_npu_host(tmp_path, "npu1", "healthy_a2.json", "10.61.0.",
                                   faults=[{"tool": "npu-smi", "args": "info", "action": "crash"}])}
    proc, report = run_preflight(tmp_path, hosts)
    line = ("npu1: npu: npu_topology failed: `npu-smi info` crashed (SIGSEGV), output: (empty output); check `dmesg` "
            "and the driver installation")
    assert proc.returncode == 2
    assert report["passed"] is False and report["problems"] == [line]
    assert checks_of(report, "npu1")["npu topology"]["status"] == "fail"
    assert "FAILED: 1 problem(s); report: " in proc.stdout
    assert line in proc.stdout


# ------------------------------------------------------------------------------- A3 super-node pair

A3_DIES = [0, 1, 2, 3]  # four dies a host keep the run short; the mesh is the same for 16


def a3_pair(root: Path, sn1: str = "a3_pair_sn1.json") -> dict:
    """Two A3 servers of one super-node (server ids 1 and 2): vNIC of die d on server s is 192.s.(2+d%2).(199-d)."""
    return {name: {**make_npu_host(root, name, scenario, f"10.70.{server}."), "preflight_npu_devices": A3_DIES}
            for server, (name, scenario) in enumerate((("sn1", sn1), ("sn2", "a3_pair_sn2.json")), start=1)}


def test_a3_super_node_pair_hccs_mesh_passes(tmp_path):
    # the vendor guide's other checks too (opt-in): LLDP neighbour, net-detect address, default gateway
    checks = json.dumps({"preflight_npu_checks": ["link", "link_stat", "tls", "ip", "net_health", "lldp", "netdetect",
                                                  "gateway"]})
    proc, report = run_preflight(tmp_path, a3_pair(tmp_path), "-e", checks)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert report["passed"] is True and report["problems"] == []
    for name in ("sn1", "sn2"):
        checks = checks_of(report, name)
        assert checks["npu devices"]["detail"] == ("hccn_check: 4 device(s) passed link, link_stat, tls, ip, net_health, "
                                                   "vnic, lldp, netdetect, gateway")
        assert checks["hccs mesh"] == {"check": "hccs mesh", "status": "pass", "detail": "4 die(s) x 4 peer vNIC(s) over HCCS"}
        assert checks["npu product"]["detail"] == 'A3 in P2P group "default" with 2 NPU host(s), all A3'


def test_a3_die_that_does_not_answer_hccs_ping_is_exactly_one_line(tmp_path):
    dead = "192.2.2.197"  # die 2 of sn2
    proc, report = run_preflight(tmp_path, a3_pair(tmp_path, "a3_hccs_dead_peer.json"))
    line = (f"sn1: hccs_ping {dead}: no answer to any of devices 0, 1, 2, 3 (device 0: hccs_ping {dead}: 0 of 3 packets "
            f"received (100.00% packets loss) (`hccn_tool -i 0 -hccs_ping -g address {dead} cnt 3`)); the die that owns "
            f"vNIC {dead} or its HCCS link is down: check it with `hccn_tool -i N -vnic -g` and `npu-smi info -t hccs` "
            "on its host")
    assert proc.returncode == 2
    assert report["problems"] == [line]
    assert line in proc.stdout
    assert checks_of(report, "sn1")["hccs mesh"]["status"] == "fail"
    assert checks_of(report, "sn2")["hccs mesh"]["status"] == "pass"


def test_a2_and_a3_in_one_p2p_group_is_one_line(tmp_path):
    hosts = {"mix-a2": {**make_npu_host(tmp_path, "mix-a2", "healthy_a2.json", "10.71.0."), "preflight_npu_devices": [0]},
             "mix-a3": {**make_npu_host(tmp_path, "mix-a3", "healthy_a3.json", "10.71.1."), "preflight_npu_devices": [0]}}
    proc, report = run_preflight(tmp_path, hosts)
    line = ('mix-a2: npu: P2P group "default" mixes A2 hosts (mix-a2) and A3 hosts (mix-a3); KV cannot move between '
            "the two generations: give them different preflight_p2p_group values (separate deployments) or use one "
            "product")
    assert proc.returncode == 2
    assert report["problems"] == [line]
    assert checks_of(report, "mix-a3")["npu product"]["status"] == "fail"
