"""The preflight role's findings (filter preflight_findings, module_utils/pd_preflight.py): from each check step's
record to the report's checks and problem lines. The lines are the ones tests/integration/test_preflight.py
asserts end to end; here every branch is reached without a playbook."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.filter.preflight_findings import preflight_findings
from ansible_collections.openfuyao.pd.plugins.filter.preflight_module_failure import preflight_module_failure

ROOT = Path(__file__).resolve().parents[2]
INVENTORY_OK = {"platform": "cpu", "runtime": "host", "ports": []}
SKIPPED = {"skipped": True, "changed": False}
CRASH = {"failed": True, "msg": "Module result deserialization failed: No start of json char found\nmore",
         "module_stderr": "Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n"}
CRASH_LINE = "Module result deserialization failed: No start of json char found (module stderr: MemoryError: out of memory)"


def found(**steps) -> dict:
    """The findings of host h1 with good inventory values and ``steps``."""
    return preflight_findings({"inventory": INVENTORY_OK, **steps}, "h1")


def checks(result: dict) -> dict[str, dict]:
    return {c["check"]: c for c in result["checks"]}


# ------------------------------------------------------------------------------- inventory values


@pytest.mark.parametrize(
    ("inventory", "line"),
    [
        ({"platform": "npu"}, 'h1: pd_platform: "npu" is not one of ascend, cuda, cpu; fix the inventory'),
        ({"platform": None}, "h1: pd_platform: null is not one of ascend, cuda, cpu; fix the inventory"),
        ({"runtime": "docker"}, 'h1: pd_runtime: "docker" is not one of host, container; fix the inventory'),
        ({"ports": [{"start": "8000", "purpose": "x"}, {"start": 8001}]},
         'h1: ports: every item needs an integer start (and end), got [{"start": "8000", "purpose": "x"}]'),
        ({"ports": [{"end": 70000, "purpose": "x", "start": 70000}, {"end": 8999, "start": 9000}, {"start": 80}]},
         'h1: ports: [{"end": 70000, "purpose": "x", "start": 70000}, {"end": 8999, "start": 9000}] must lie within '
         "1-65535 with end >= start; fix the inventory/plan"),
        ({"ports": [{"start": 0}]}, 'h1: ports: [{"start": 0}] must lie within 1-65535 with end >= start; fix the '
                                    "inventory/plan"),
    ],
)
def test_an_inventory_value_preflight_cannot_use_is_one_line(inventory: dict, line: str) -> None:
    result = preflight_findings({"inventory": {**INVENTORY_OK, **inventory}}, "h1")
    assert result == {"checks": [], "problems": [line]}


def test_good_inventory_values_give_nothing() -> None:
    ports = [{"start": 1, "end": 65535}, {"start": 8000}]
    assert preflight_findings({"inventory": {"platform": "ascend", "runtime": "container", "ports": ports}}, "h") == {
        "checks": [], "problems": []}


# ------------------------------------------------------------------------------- NPU steps

TOPOLOGY = {"chips": [{"phy_id": 0}], "problems": [], "msg": "A2, driver 24.1.rc3: 8 chip(s), 8 free, 8 judged: ok"}
HCCN = {"devices": [{"device": 0}, {"device": 1}], "problems": [],
        "msg": "hccn_check: 2 device(s) passed link, tls\ndevice 0: ok\ndevice 1: ok"}


def test_topology_pass_fail_and_crash() -> None:
    assert checks(found(topology={"result": TOPOLOGY}))["npu topology"] == {
        "check": "npu topology", "status": "pass", "detail": TOPOLOGY["msg"]}
    busy = found(topology={"result": {**TOPOLOGY, "problems": ["device 1: busy"], "msg": "1 busy"}})
    assert busy["checks"] == [{"check": "npu topology", "status": "fail", "detail": "1 busy"}]
    assert busy["problems"] == ["h1: device 1: busy"]
    crash = found(topology={"result": CRASH})
    assert crash["checks"] == [{"check": "npu topology", "status": "fail", "detail": CRASH_LINE}]
    assert crash["problems"] == [f"h1: npu: npu_topology failed: {CRASH_LINE}"]


def test_devices_detail_is_the_first_line_and_a_failed_module_is_one_line() -> None:
    assert checks(found(devices={"result": HCCN}))["npu devices"] == {
        "check": "npu devices", "status": "pass", "detail": "hccn_check: 2 device(s) passed link, tls"}
    bad = found(devices={"result": {**HCCN, "problems": ["device 3: link status is DOWN"]}})
    assert checks(bad)["npu devices"]["status"] == "fail"
    assert bad["problems"] == ["h1: device 3: link status is DOWN"]
    failed = found(devices={"result": {"failed": True, "msg": "hccn_tool not found"}})
    assert failed["problems"] == ["h1: npu: hccn_check failed: hccn_tool not found"]
    assert checks(failed)["npu devices"]["detail"] == "hccn_tool not found"


def test_ping_mesh_skip_pass_fail_and_failed_module() -> None:
    skipped = found(ping={"result": SKIPPED, "targets": []})
    assert skipped == {"checks": [{"check": "ping mesh", "status": "skip",
                                   "detail": "no other NPU host in the play and no ping targets"}], "problems": []}
    targets = ["10.0.0.10", "10.0.1.10"]
    ran = found(ping={"result": {**HCCN, "problems": []}, "targets": targets})
    assert ran["checks"] == [{"check": "ping mesh", "status": "pass",
                              "detail": "2 device(s) x 2 target(s): 10.0.0.10, 10.0.1.10"}]
    lossy = found(ping={"result": {**HCCN, "problems": ["device 4: ping 10.0.0.10: 0 of 3"]}, "targets": targets})
    assert checks(lossy)["ping mesh"]["status"] == "fail"
    assert lossy["problems"] == ["h1: device 4: ping 10.0.0.10: 0 of 3"]
    # A module that did not report is one line (in Jinja this crashed the record task on `devices | length`).
    crashed = found(ping={"result": CRASH, "targets": targets})
    assert crashed["checks"] == [{"check": "ping mesh", "status": "fail", "detail": CRASH_LINE}]
    assert crashed["problems"] == [f"h1: ping: hccn_check failed: {CRASH_LINE}"]


def test_hccs_mesh_skip_pass_and_failed_module() -> None:
    assert checks(found(hccs={"result": SKIPPED, "targets": []}))["hccs mesh"] == {
        "check": "hccs mesh", "status": "skip", "detail": "no other A3 host in this P2P group (or no vNIC up)"}
    ran = found(hccs={"result": {"devices": [0, 1, 2, 3], "problems": []}, "targets": ["192.2.2.199"] * 4})
    assert checks(ran)["hccs mesh"] == {"check": "hccs mesh", "status": "pass",
                                        "detail": "4 die(s) x 4 peer vNIC(s) over HCCS"}
    failed = found(hccs={"result": {"failed": True, "msg": "boom"}, "targets": ["192.2.2.199"]})
    assert failed["problems"] == ["h1: hccs mesh: hccn_check failed: boom"]


MIX_LINE = ('npu: P2P group "default" mixes A2 hosts (mix-a2, z-a2) and A3 hosts (mix-a3); KV cannot move between '
            "the two generations: give them different preflight_p2p_group values (separate deployments) or use one "
            "product")


def test_a2_and_a3_in_one_group_is_one_line_on_the_first_host_and_a_failed_check_on_each() -> None:
    members = {"z-a2": "A2", "mix-a3": "A3", "mix-a2": "A2"}
    for host, product in members.items():
        result = preflight_findings({"product": {"product": product, "group": "default", "members": members}}, host)
        assert result["checks"] == [{"check": "npu product", "status": "fail", "detail": MIX_LINE}]
        assert result["problems"] == ([f"mix-a2: {MIX_LINE}"] if host == "mix-a2" else [])


def test_one_product_in_a_group_passes() -> None:
    result = found(product={"product": "A3", "group": "pod", "members": {"sn1": "A3", "sn2": "A3"}})
    assert result == {"checks": [{"check": "npu product", "status": "pass",
                                  "detail": 'A3 in P2P group "pod" with 2 NPU host(s), all A3'}], "problems": []}


def test_a_host_other_than_ascend_notes_the_skip() -> None:
    assert found(no_npu={"platform": "cuda"})["checks"] == [
        {"check": "npu", "status": "skip", "detail": "platform is cuda, not ascend: NPU checks skipped"}]


# ------------------------------------------------------------------------------- host checks

NOT_MOUNTED = {"mounted": False, "path": "/mnt"}
MOUNTED = {"mounted": True, "fstype": "nfs4", "source": "srv:/export"}
PROBE = {"ports": [], "busy": []}


def host_step(**over) -> dict:
    step = {"probe": PROBE, "probe_again": SKIPPED, "mount_run": SKIPPED, "storage_path": "", "storage_fstype": "",
            "mount_command": [], "disk_min_free_gb": 20, "ports": []}
    return {**step, **over}


def test_nothing_to_judge_leaves_the_host_checks_out() -> None:
    assert found(host=host_step()) == {"checks": [], "problems": []}


def test_storage_not_mounted_mounted_wrong_type_and_failed_mount_command() -> None:
    step = host_step(storage_path="/mnt", probe={**PROBE, "mount": NOT_MOUNTED})
    line = ("storage: /mnt is not a mount point; mount the shared storage there (e.g. `mount -t nfs SERVER:/export "
            "/mnt`) or set preflight_storage_mount_command")
    assert found(host=step)["checks"] == [{"check": "storage", "status": "fail", "detail": line, "problem": line}]
    assert found(host=step)["problems"] == [f"h1: {line}"]

    ok = found(host={**step, "probe": {**PROBE, "mount": MOUNTED}, "storage_fstype": "nfs4"})
    assert checks(ok)["storage"]["status"] == "pass"
    assert checks(ok)["storage"]["detail"] == "/mnt mounted (nfs4 from srv:/export)"

    wrong = found(host={**step, "probe": {**PROBE, "mount": MOUNTED}, "storage_fstype": "dpc"})
    assert wrong["problems"] == ["h1: storage: /mnt is nfs4 from srv:/export, expected dpc; mount the right "
                                 "filesystem there"]

    # The mount command ran and failed: its message, stderr first, at most 160 characters in whole words.
    run = {"changed": True, "rc": 1, "stderr": "", "msg": "non-zero return code"}
    failed = found(host={**step, "mount_run": run, "mount_command": ["/bin/false"], "probe_again": {**PROBE, "mount": NOT_MOUNTED}})
    assert failed["problems"] == ["h1: storage: /mnt is not a mount point and `/bin/false` failed: non-zero return code"]
    long = {**run, "stderr": "  mount: " + "word " * 60 + "\n"}
    line = found(host={**step, "mount_run": long, "mount_command": ["mount", "-t", "dpc", "/kdxf", "/mnt"]})["problems"][0]
    assert line.startswith("h1: storage: /mnt is not a mount point and `mount -t dpc /kdxf /mnt` failed: mount: word")
    assert line.endswith("word...") and len(line.split("failed: ", 1)[1]) <= 160


def test_storage_mounted_by_the_mount_command_passes_on_the_second_probe() -> None:
    step = host_step(storage_path="/mnt", probe={**PROBE, "mount": NOT_MOUNTED}, mount_run={"changed": True, "rc": 0},
                     probe_again={"mount": MOUNTED}, mount_command=["mount", "/mnt"])
    assert checks(found(host=step))["storage"]["status"] == "pass"


def test_disk_pass_and_fail() -> None:
    disk = {"free_gb": 12.5, "path": "/var/lib"}
    low = found(host=host_step(probe={**PROBE, "disk": disk}))
    line = "disk: only 12.5 GB free at /var/lib, need 20 GB for images and models; free space or set preflight_disk_path"
    assert low["checks"] == [{"check": "disk", "status": "fail", "detail": "12.5 GB free at /var/lib", "problem": line}]
    assert low["problems"] == [f"h1: {line}"]
    assert checks(found(host=host_step(probe={**PROBE, "disk": disk}, disk_min_free_gb=12)))["disk"]["status"] == "pass"


def test_ports_free_and_busy() -> None:
    wanted = [{"start": 8100, "end": 8100, "purpose": "http"}, {"start": 20001, "end": 20003, "purpose": "kv"}]
    free = [{**wanted[0], "busy": {}}, {**wanted[1], "busy": {}}]
    result = found(host=host_step(ports=wanted, probe={**PROBE, "ports": free}))
    assert checks(result)["ports"]["detail"] == "2 port range(s) free: 8100, 20001"
    assert result["problems"] == []
    busy = [{**wanted[0], "busy": {"8100": "in use"}}, {**wanted[1], "busy": {"20002": "in use", "20003": "in use"}}]
    result = found(host=host_step(ports=wanted, probe={**PROBE, "ports": busy}))
    assert checks(result)["ports"]["status"] == "fail"
    assert checks(result)["ports"]["detail"] == "2 port range(s) in use"
    assert result["problems"] == ["h1: ports: 8100, 20002, 20003 (http, kv) already in use; stop what listens there or "
                                  "change the ports in the inventory/plan"]


def test_container_runtime_answers_missing_and_silent() -> None:
    answers = found(host=host_step(probe={**PROBE, "engine": {"engine": "docker", "path": "/usr/bin/docker", "ok": True}}))
    assert checks(answers)["container runtime"]["detail"] == "docker at /usr/bin/docker answers"
    missing = found(host=host_step(probe={**PROBE, "engine": {"engine": "podman", "path": None, "ok": False}}))
    assert missing["problems"] == ["h1: container runtime: podman not found; install it or set pd_runtime: host"]
    silent = found(host=host_step(probe={**PROBE, "engine": {"engine": "docker", "path": "/usr/bin/docker", "ok": False,
                                                             "detail": "cannot connect"}}))
    assert silent["problems"] == ["h1: container runtime: docker does not answer (cannot connect); start its daemon"]
    assert checks(silent)["container runtime"]["detail"] == ""


# ------------------------------------------------------------------------------- firewall, rescue, order


@pytest.mark.parametrize(
    ("state", "firewall", "detail"),
    [({"rc": 252}, "open_ports", "firewalld not running"), ({}, "disable", "firewalld not running"),
     ({"rc": 0}, "disable", "firewalld stopped and disabled"),
     ({"rc": 0}, "open_ports", "firewalld allows 2 needed port range(s)")],
)
def test_firewall_notes_what_was_done(state: dict, firewall: str, detail: str) -> None:
    step = {"state": state, "firewall": firewall, "ports": [{"start": 1}, {"start": 2}]}
    assert found(firewall=step) == {"checks": [{"check": "firewall", "status": "pass", "detail": detail}], "problems": []}


def test_a_crashed_check_task_is_one_line_naming_the_task() -> None:
    result = found(failure={"task": "Read the probe's result", "result": {"msg": CRASH_LINE, "failed": True}})
    assert result["checks"] == [{"check": "Read the probe's result", "status": "fail", "detail": CRASH_LINE}]
    assert result["problems"] == [f'h1: preflight task "Read the probe\'s result" failed: {CRASH_LINE}']
    unknown = found(failure={"task": None, "result": None})
    assert unknown["problems"] == ['h1: preflight task "unknown task" failed: the module returned no message']


def test_checks_come_in_the_order_the_steps_run_and_missing_steps_add_nothing() -> None:
    steps = {"failure": {"task": "Probe", "result": {"msg": "x"}}, "firewall": None, "no_npu": {"platform": "cpu"},
             "host": host_step(probe={**PROBE, "disk": {"free_gb": 99.0, "path": "/"}}), "inventory": {"platform": "cpu",
             "runtime": "host", "ports": []}, "topology": None}
    assert [c["check"] for c in preflight_findings(steps, "h")["checks"]] == ["npu", "disk", "Probe"]


def test_an_unknown_step_or_a_record_that_is_not_a_dict_is_a_filter_error() -> None:
    with pytest.raises(AnsibleFilterError, match="unknown step"):
        preflight_findings({"firewal": {}}, "h")
    with pytest.raises(AnsibleFilterError, match="step host must be a dict"):
        preflight_findings({"host": ["x"]}, "h")
    with pytest.raises(AnsibleFilterError, match="must be a dict by step name"):
        preflight_findings([], "h")


@pytest.mark.parametrize(
    ("result", "line"),
    [(CRASH, CRASH_LINE), ({}, "the module returned no message"), ({"msg": ""}, "the module returned an empty message"),
     ({"msg": "a\nb", "module_stderr": "  \n"}, "a"), (None, "the module returned no message")],
)
def test_module_failure_is_one_line(result: dict | None, line: str) -> None:
    assert preflight_module_failure(result) == line


def test_the_role_keeps_records_and_accumulates_no_findings_in_jinja() -> None:
    """Each step sets its own record; no task builds the checks or problem lists by `x + [...]`."""
    tasks = (ROOT / "roles" / "preflight" / "tasks").glob("*.yml")
    grep = subprocess.run(["grep", "-n", "_preflight_checks\\|_preflight_problems", *map(str, tasks)],
                          capture_output=True, text=True, check=False)
    assert grep.stdout == ""
