#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hccn_check
short_description: Check the Ascend NPU parameter-plane network with hccn_tool
version_added: "0.1.0"
description:
  - Runs C(hccn_tool) once per device and check, one call at a time, and turns the text it
    prints into structured facts (link state, flap history, TLS switch, IP address, net health,
    RoCE ping results and, on request, the A3 vNIC, HCCS ping, LLDP neighbour, net-detect address
    and default gateway).
  - C(hccs_ping) and C(vnic) exist on A3 super-node mainboards only. Where the tool answers
    C(The command is not supported on this product.) (A2) the check is skipped with a note in
    RV(devices[].skipped), not failed.
  - C(hccs_ping) exits 0 whatever it lost; its C(packets loss) summary and per-packet lines are
    parsed. A vNIC address that none of the checked devices reaches is one line for the host, not
    one per device.
  - Every finding is a one-line problem prefixed with C(device N:). The module fails listing
    all of them, or only reports them when O(fail_on_problem=false).
  - Exit codes of C(hccn_tool) are not trusted alone (ping exits 1 on any loss, some
    failures exit 0); the text is parsed. C(hccn_tool is busy) answers are retried with
    exponential backoff, within O(busy_budget) for the whole run.
  - Every call is killed after O(command_timeout) seconds. A device whose call hangs is not
    checked further; when a second device hangs, or the busy budget is spent, the remaining
    devices are reported as not checked in one line and the module returns.
  - Bad tool output (binary junk, truncated text, impossible values, a crash) is a problem line
    naming the command and quoting an escaped excerpt; the module never raises.
  - With O(fix_tls=true) devices whose TLS switch is 1 are set to 0 with
    C(hccn_tool -i N -tls -s enable 0); this is the only change the module ever makes.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  hccn_tool:
    description:
      - Path of C(hccn_tool).
      - When not set, C(hccn_tool) is looked up on E(PATH), then at
        C(/usr/local/Ascend/driver/tools/hccn_tool).
    type: path
  hccn_conf:
    description:
      - Path of the HCCN configuration file. Its C(address_N) keys select the default devices
        and are compared with the address the device really has.
    type: path
    default: /etc/hccn.conf
  devices:
    description:
      - Physical device ids to check (the C(-i) value of C(hccn_tool); 0..7 on A2, the Chip
        Phy-ID 0..15 on A3).
      - Default is every device found in O(hccn_conf), else 0..7.
    type: list
    elements: int
  checks:
    description:
      - Which checks to run.
      - Default is V(link), V(link_stat), V(tls), V(ip), V(net_health), plus V(ping) when O(ping_targets) is
        given and V(hccs_ping) when O(hccs_ping_targets) is given.
      - V(vnic) reads the die's HCCS vNIC (A3), V(lldp) the switch port seen by LLDP, V(netdetect) and
        V(gateway) the detect address and default gateway (compared with C(netdetect_N)/C(gateway_N) of
        O(hccn_conf), the gateway also with the device's subnet when V(ip) runs too).
    type: list
    elements: str
    choices: [link, link_stat, tls, ip, net_health, vnic, lldp, netdetect, gateway, ping, hccs_ping]
  ping_targets:
    description:
      - IP addresses every listed device pings (C(hccn_tool -i N -ping -g address IP)).
        Use device IPs of other servers to check the parameter-plane mesh.
    type: list
    elements: str
    default: []
  hccs_ping_targets:
    description:
      - vNIC addresses (A3, C(hccn_tool -i N -vnic -g) of the peer dies) every listed device pings over HCCS
        (C(hccn_tool -i N -hccs_ping -g address IP cnt COUNT)).
    type: list
    elements: str
    default: []
  hccs_ping_count:
    description:
      - Packets per C(hccs_ping) call (the tool accepts 1..1000).
    type: int
    default: 3
  link_flap_window:
    description:
      - A C(LINK DOWN) record in C(-link_stat -g) at most this many seconds older than the
        tool's own C(current time) counts as flapping.
    type: int
    default: 86400
  fix_tls:
    description:
      - Set the TLS switch to 0 on devices where it is 1. Reports C(changed); honours check mode.
    type: bool
    default: false
  fail_on_problem:
    description:
      - Fail when any problem is found. With V(false) the report is returned and the task succeeds.
    type: bool
    default: true
  busy_retries:
    description:
      - How many times a C(hccn_tool is busy) answer is retried (backoff 0.5 s, 1 s, 2 s, ...).
    type: int
    default: 5
  busy_budget:
    description:
      - Seconds that all busy retries of this run may wait in total (one host). Once spent, the
        device is reported busy and the devices not yet checked are reported in one line, so a
        tool that is busy forever costs this long, not O(busy_retries) backoffs per call.
    type: int
    default: 20
  command_timeout:
    description:
      - Seconds one C(hccn_tool) call may take before it is killed (waiting for the lock that serialises
        this collection's calls may take twice as long again; then the call counts as hung too).
      - Real calls answer in well under a second; a ping of 3 packets to a dead address takes about 3 s.
    type: int
    default: 15
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: Queries run in check mode too (they change nothing); O(fix_tls) only reports what it would change.
  diff_mode:
    support: none
notes:
  - The first C(hccn_tool -tls -g) on a device may record C(tls_enable_N) in C(/etc/hccn.conf); that is
    the driver's own behaviour.
  - Requires root on a host with the Ascend driver (Atlas 800I/800T A2 or A3).
"""

EXAMPLES = r"""
- name: Check every device listed in /etc/hccn.conf
  openfuyao.pd.hccn_check:

- name: Ping a device of every other server and switch TLS off where it is on
  openfuyao.pd.hccn_check:
    ping_targets: [10.20.1.10, 10.20.2.10]
    fix_tls: true

- name: Report only, decide later
  openfuyao.pd.hccn_check:
    devices: [0, 1, 2, 3]
    checks: [link, tls]
    fail_on_problem: false
  register: hccn

# Ad hoc: ansible npu -i cluster.ini -m openfuyao.pd.hccn_check -a 'ping_targets=10.20.1.10'
"""

RETURN = r"""
devices:
  description: One entry per checked device; keys of checks that did not run are null.
  returned: always
  type: list
  elements: dict
  contains:
    device:
      description: Physical device id.
      type: int
    link:
      description: C(UP) or C(DOWN).
      type: str
    link_up_count:
      description: Link up events since boot.
      type: int
    link_down_count:
      description: Link down events (counted from the records on drivers that do not print it).
      type: int
    last_change:
      description: Newest link change record, for example C(Fri Sep  1 06:34:43 2023 DOWN).
      type: str
    flapping:
      description: Whether a C(LINK DOWN) record lies within O(link_flap_window).
      type: bool
    tls_switch:
      description: TLS switch after any fix (0 off, 1 on); 0 when the device has no certificate.
      type: int
    tls_certificate:
      description: Whether the device holds a TLS certificate.
      type: bool
    tls_fixed:
      description: Whether the TLS switch was (or in check mode would be) set to 0.
      type: bool
    ip:
      description: Address reported by C(hccn_tool -ip -g); null when none is configured.
      type: str
    netmask:
      description: Netmask reported by C(hccn_tool -ip -g).
      type: str
    conf_ip:
      description: C(address_N) from O(hccn_conf), if any.
      type: str
    net_health:
      description: C(Success), C(Init), C(Fault), C(Socket fail), ...
      type: str
    ping:
      description: One entry per target with C(target), C(transmitted), C(received), C(loss_pct), C(ok).
      type: list
      elements: dict
    vnic_link:
      description: C(UP) or C(DOWN) (A3 HCCS vNIC).
      type: str
    vnic_ip:
      description: The die's vNIC address.
      type: str
    lldp:
      description: LLDP neighbour (C(chassis_id), C(port_id), C(ifname), C(system_name), C(system_description)).
      type: dict
    netdetect:
      description: Net-detect address; null when unset.
      type: str
    gateway:
      description: Default gateway; null when none is set.
      type: str
    hccs_ping:
      description: One entry per target with C(target), C(transmitted), C(received), C(loss_pct), C(ok),
        C(packets) (C(seq), C(result), C(time_us)), C(max_us), C(average_us), C(tp95_us).
      type: list
      elements: dict
    skipped:
      description: Checks this product does not support, one note each.
      type: list
      elements: str
    problems:
      description: This device's problems.
      type: list
      elements: str
  sample:
    - device: 0
      link: UP
      link_up_count: 1
      link_down_count: 0
      last_change: Tue Oct 28 20:01:07 2025 UP
      flapping: false
      tls_switch: 0
      tls_certificate: true
      tls_fixed: false
      ip: 10.20.0.10
      netmask: 255.255.255.0
      conf_ip: 10.20.0.10
      net_health: Success
      ping: [{target: 10.20.1.10, transmitted: 3, received: 3, loss_pct: 0.0, ok: true}]
      problems: []
problems:
  description: Every problem of every device, one line each, prefixed C(device N:).
  returned: always
  type: list
  elements: str
  sample: ["device 3: link status is DOWN; check the cable, optics and switch port (hccn_tool -i 3 -link -g)"]
table:
  description: A human-readable table of the results, one line per device.
  returned: always
  type: list
  elements: str
msg:
  description: One-line summary, followed by every problem when there are any.
  returned: always
  type: str
  sample: "hccn_check: 8 device(s) passed link, link_stat, tls, ip, net_health"
hccn_tool:
  description: Path of the C(hccn_tool) that was run.
  returned: always
  type: str
"""

import ipaddress
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.openfuyao.pd.plugins.module_utils.ascend_tool import (
    HCCN_TOOL_FALLBACK,
    ToolRunner,
    resolve_tool,
)
from ansible_collections.openfuyao.pd.plugins.module_utils.text_table import align_columns
from ansible_collections.openfuyao.pd.plugins.module_utils.hccn_parse import (
    BUSY_MARKER,
    NO_CERT_MARKER,
    NO_GATEWAY_MARKER,
    NO_IP_MARKER,
    ParseError,
    excerpt,
    flap_summary,
    is_not_supported,
    net_health_ok,
    parse_gateway,
    parse_hccn_conf,
    parse_hccs_ping,
    parse_ip,
    parse_lldp,
    parse_netdetect,
    parse_link,
    parse_link_stat,
    parse_net_health,
    parse_ping,
    parse_set_result,
    parse_tls,
    parse_vnic,
)

ALL_CHECKS = ["link", "link_stat", "tls", "ip", "net_health", "vnic", "lldp", "netdetect", "gateway", "ping",
              "hccs_ping"]
BASE_CHECKS = ["link", "link_stat", "tls", "ip", "net_health"]


class HostAbort(Exception):
    """The tool is unusable on this host (busy budget spent, devices hang): stop, one line."""


class DeviceProblem(Exception):
    """A check of one device could not produce its facts; the text is the problem line."""

    def __init__(self, text: str, fatal: bool = False) -> None:
        super().__init__(text)
        self.fatal = fatal  # the device itself is unusable: its other checks would only repeat this


NO_DEVICE_MARKERS = ("invalid device id", "device is not exist")


class DeviceChecker:
    """Runs the selected checks of one device and collects facts and problem lines."""

    # A second device that hangs means the driver hangs: the other devices would only cost timeouts.
    MAX_HUNG_DEVICES = 2

    def __init__(self, runner: ToolRunner, tool: str, conf_path: str, params: dict, check_mode: bool) -> None:
        self.runner = runner
        self.tool = tool
        self.conf_path = conf_path
        self.params = params
        self.check_mode = check_mode
        self.hung: list[int] = []
        self.last_command = ""
        self.conf: dict[str, str] = {}
        self.hccs_pingers: list[int] = []  # devices whose hccs_ping ran (the product supports it)
        self.hccs_failures: dict[str, dict[int, str]] = {}  # target -> device -> why it got no full answer

    def call(self, dev: int, args: list[str], ok=lambda r: r.rc == 0):
        result = self.runner.run([self.tool, "-i", str(dev), *args])
        self.last_command = result.command
        broken = result.broken(self.runner.timeout)
        if broken:
            if result.timed_out:
                self.hung.append(dev)
            raise DeviceProblem(broken, fatal=True)
        if result.is_busy(BUSY_MARKER):
            if self.runner.budget_spent:
                raise HostAbort(f"hccn_tool: `{result.command}` still answers 'hccn_tool is busy' after "
                                f"{self.runner.busy_spent:g} s of retries (busy_budget)")
            raise DeviceProblem(f"`{result.command}` still answers 'hccn_tool is busy' after {result.busy_retries} "
                                "retries; stop other hccn_tool users on this host and run again")
        if not ok(result):
            text = (result.stderr + result.stdout).lower()
            raise DeviceProblem(f"`{result.command}` failed (rc={result.rc}): {excerpt(result.stderr or result.stdout)}",
                                fatal=any(marker in text for marker in NO_DEVICE_MARKERS))
        return result

    def run(self, dev: int, checks: list[str], conf: dict) -> tuple[dict, bool]:
        facts = {
            "device": dev, "link": None, "link_up_count": None, "link_down_count": None, "last_change": None,
            "flapping": None, "tls_switch": None, "tls_certificate": None, "tls_fixed": False, "ip": None,
            "netmask": None, "conf_ip": conf.get("address"), "net_health": None, "ping": [], "problems": [],
            "vnic_link": None, "vnic_ip": None, "lldp": None, "netdetect": None, "gateway": None, "hccs_ping": [],
            "skipped": [],
        }
        self.conf = conf
        changed = False
        for check in checks:
            self.last_command = ""
            try:
                changed = getattr(self, "check_" + check)(dev, facts) or changed
            except (DeviceProblem, ParseError) as exc:
                facts["problems"].append(f"device {dev}: {exc}")
                if getattr(exc, "fatal", False):
                    break
            except HostAbort:
                raise
            except Exception as exc:  # last line of defence: a check never escapes as a traceback
                facts["problems"].append(
                    f"device {dev}: the {check} check could not judge the output of `{self.last_command or check}` "
                    f"({type(exc).__name__}: {excerpt(str(exc))}); please report this with the tool's output")
                break
        return facts, changed

    def stop_reason(self) -> str | None:
        """Why no further device should be checked on this host, or None."""
        if len(self.hung) >= self.MAX_HUNG_DEVICES:
            hung = ", ".join(str(d) for d in self.hung)
            return f"hccn_tool hangs on devices {hung} (command_timeout {self.runner.timeout:g} s each)"
        return None

    def check_link(self, dev: int, facts: dict) -> bool:
        result = self.call(dev, ["-link", "-g"])
        facts["link"] = parse_link(result.stdout, result.command)
        if facts["link"] != "UP":
            raise DeviceProblem(f"link status is DOWN; check the cable, optics and switch port ({result.command})")
        return False

    def check_link_stat(self, dev: int, facts: dict) -> bool:
        result = self.call(dev, ["-link_stat", "-g"])
        stat = parse_link_stat(result.stdout, result.command)
        summary = flap_summary(stat, self.params["link_flap_window"])
        facts.update({
            "link_up_count": stat["up_count"],
            "link_down_count": summary["link_down_count"],
            "last_change": summary["last_change"],
            "flapping": summary["flapping"],
        })
        if summary["flapping"]:
            downs = summary["recent_down_records"]
            raise DeviceProblem(
                f"link flapping: {len(downs)} LINK DOWN record(s) within {self.params['link_flap_window']}s, latest "
                f"{downs[0]}; check the cable, optics and switch port, then clear the history with "
                f"`hccn_tool -i {dev} -link_stat -c`")
        return False

    def _read_tls(self, dev: int) -> dict:
        def ok(r):
            return r.rc == 0 or NO_CERT_MARKER.lower() in (r.stderr + r.stdout).lower()

        result = self.call(dev, ["-tls", "-g"], ok=ok)
        return parse_tls(result.stdout, result.stderr, result.command)

    def check_tls(self, dev: int, facts: dict) -> bool:
        tls = self._read_tls(dev)
        facts["tls_switch"], facts["tls_certificate"] = tls["switch"], tls["certificate"]
        if tls["switch"] == 0:
            return False
        if not self.params["fix_tls"]:
            raise DeviceProblem(
                f"TLS switch is {tls['switch']} but must be 0 on every device (HCCL refuses mixed TLS settings); "
                f"run with fix_tls=true or `hccn_tool -i {dev} -tls -s enable 0`")
        facts["tls_fixed"] = True
        if self.check_mode:
            return True
        result = self.call(dev, ["-tls", "-s", "enable", "0"])
        parse_set_result(result.stdout, result.command)
        tls = self._read_tls(dev)
        facts["tls_switch"] = tls["switch"]
        if tls["switch"] != 0:
            raise DeviceProblem(f"TLS switch is still {tls['switch']} after `{result.command}`; "
                                "check /var/log/hccn_tool/")
        return True

    def check_ip(self, dev: int, facts: dict) -> bool:
        def ok(r):
            return r.rc == 0 or NO_IP_MARKER in (r.stderr + r.stdout).lower()

        result = self.call(dev, ["-ip", "-g"], ok=ok)
        parsed = parse_ip(result.stdout, result.stderr, result.command)
        conf_ip = facts["conf_ip"]
        if parsed is None:
            recover = f"`hccn_tool -i {dev} -cfg recovery`"
            where = (f"{self.conf_path} has address_{dev}={conf_ip} but the device does not; run {recover}"
                     if conf_ip else
                     f"set address_{dev} and netmask_{dev} in {self.conf_path}, then run {recover}")
            raise DeviceProblem("no IP address configured; " + where)
        facts["ip"], facts["netmask"] = parsed["ipaddr"], parsed["netmask"]
        if conf_ip and conf_ip != parsed["ipaddr"]:
            raise DeviceProblem(f"device IP {parsed['ipaddr']} differs from address_{dev}={conf_ip} in "
                                f"{self.conf_path} (stale file?); fix the file or run "
                                f"`hccn_tool -i {dev} -cfg recovery`")
        return False

    def check_net_health(self, dev: int, facts: dict) -> bool:
        result = self.call(dev, ["-net_health", "-g"])
        facts["net_health"] = parse_net_health(result.stdout, result.command)
        if not net_health_ok(facts["net_health"]):
            raise DeviceProblem(f"net health status is '{facts['net_health']}' (expected Success or Init); check "
                                f"netdetect_{dev} in {self.conf_path} and the route to the detect address")
        return False

    def check_ping(self, dev: int, facts: dict) -> bool:
        failures = []
        for target in self.params["ping_targets"]:
            # Any loss makes hccn_tool exit 1 with 'Command execute failed!': parse the text instead.
            result = self.call(dev, ["-ping", "-g", "address", target], ok=lambda r: r.rc in (0, 1))
            try:
                ping = parse_ping(result.stdout, target, result.command)
            except ParseError as exc:
                # rc 1 without a summary is a failure of the tool; rc 0 without one is output we cannot read.
                failures.append(f"`{result.command}` failed (rc={result.rc}): {excerpt(result.stderr or result.stdout)}"
                                if result.rc != 0 else str(exc))
                continue
            facts["ping"].append(ping)
            if not ping["ok"]:
                failures.append(f"ping {target}: {ping['received']} of {ping['transmitted']} packets received "
                                f"({ping['loss_pct']:.2f}% loss); check the route, VLAN and switch between this "
                                f"device and {target}")
        facts["problems"].extend(f"device {dev}: {failure}" for failure in failures)
        return False

    def _unless_unsupported(self, dev: int, args: list[str]):
        """Run an A3-only query; None where the product answers 'not supported on this product'."""
        result = self.call(dev, args, ok=lambda r: r.rc == 0 or is_not_supported(r.stdout + r.stderr))
        if is_not_supported(result.stdout + result.stderr):
            return None
        return result

    def check_vnic(self, dev: int, facts: dict) -> bool:
        result = self._unless_unsupported(dev, ["-vnic", "-g"])
        if result is None:
            facts["skipped"].append("vnic: not supported on this product (A3 super-node only), skipped")
            return False
        vnic = parse_vnic(result.stdout, result.command)
        facts["vnic_link"], facts["vnic_ip"] = vnic["link"], vnic["ipaddr"]
        if vnic["link"] != "UP":
            raise DeviceProblem(f"vNIC link is DOWN ({result.command}); this die cannot reach its super-node peers "
                                "over HCCS: check `npu-smi info -t hccs` and the super-node cabling")
        return False

    def check_lldp(self, dev: int, facts: dict) -> bool:
        result = self.call(dev, ["-lldp", "-g"])
        facts["lldp"] = parse_lldp(result.stdout, result.command)
        if facts["lldp"] is None:
            raise DeviceProblem(f"no LLDP neighbour ({result.command} printed nothing); the switch port is down, "
                                "not split as planned (e.g. 400GE as 2x200GE) or has LLDP off")
        return False

    def check_netdetect(self, dev: int, facts: dict) -> bool:
        result = self.call(dev, ["-netdetect", "-g"])
        facts["netdetect"] = parse_netdetect(result.stdout, result.command)
        want = self.conf.get("netdetect")
        if facts["netdetect"] is None:
            raise DeviceProblem(f"no net-detect address set ({result.command}), so net health cannot probe; set "
                                f"netdetect_{dev} in {self.conf_path}, then run `hccn_tool -i {dev} -cfg recovery`")
        if want and want != facts["netdetect"]:
            raise DeviceProblem(f"net-detect address {facts['netdetect']} differs from netdetect_{dev}={want} in "
                                f"{self.conf_path}; fix the file or run `hccn_tool -i {dev} -cfg recovery`")
        return False

    def check_gateway(self, dev: int, facts: dict) -> bool:
        result = self.call(dev, ["-gateway", "-g"],
                           ok=lambda r: r.rc == 0 or NO_GATEWAY_MARKER in (r.stderr + r.stdout).lower())
        parsed = parse_gateway(result.stdout, result.stderr, result.command)
        want = self.conf.get("gateway")
        if parsed is None:
            raise DeviceProblem(f"no default gateway set ({result.command}); set gateway_{dev} in {self.conf_path}, "
                                f"then run `hccn_tool -i {dev} -cfg recovery`")
        facts["gateway"] = parsed["gateway"]
        if want and want != parsed["gateway"]:
            raise DeviceProblem(f"default gateway {parsed['gateway']} differs from gateway_{dev}={want} in "
                                f"{self.conf_path}; fix the file or run `hccn_tool -i {dev} -cfg recovery`")
        if facts["ip"] and facts["netmask"] and is_ipv4(facts["netmask"]):
            net = ipaddress.IPv4Network(f"{facts['ip']}/{facts['netmask']}", strict=False)
            if ipaddress.IPv4Address(parsed["gateway"]) not in net:
                raise DeviceProblem(f"default gateway {parsed['gateway']} is outside the device's subnet {net}; fix "
                                    f"gateway_{dev} or address_{dev}/netmask_{dev} in {self.conf_path}")
        return False

    def check_hccs_ping(self, dev: int, facts: dict) -> bool:
        count = str(self.params["hccs_ping_count"])
        for index, target in enumerate(self.params["hccs_ping_targets"]):
            # Loss leaves the exit code at 0: only the text tells. A2 answers 'not supported': a skip.
            result = self._unless_unsupported(dev, ["-hccs_ping", "-g", "address", target, "cnt", count])
            if result is None:
                facts["skipped"].append("hccs_ping: not supported on this product (A3 super-node only), skipped")
                return False
            if index == 0:
                self.hccs_pingers.append(dev)
            try:  # (a non-zero exit, e.g. 31 'device is occupied', is the call's own one-line failure)
                ping = parse_hccs_ping(result.stdout, target, result.command)
            except ParseError as exc:
                why = str(exc)
            else:
                facts["hccs_ping"].append(ping)
                if ping["ok"]:
                    continue
                why = (f"hccs_ping {target}: {ping['received']} of {ping['transmitted']} packets received "
                       f"({ping['loss_pct']:.2f}% packets loss) (`{result.command}`)")
            self.hccs_failures.setdefault(target, {})[dev] = why
        return False

    def hccs_problem_lines(self, results: list[dict]) -> list[str]:
        """Per target: one host line when no device of the host reaches it, else one line per failing device."""
        by_dev = {facts["device"]: facts for facts in results}
        host_lines = []
        for target, failed in self.hccs_failures.items():
            if len(self.hccs_pingers) > 1 and set(failed) >= set(self.hccs_pingers):
                devs = ", ".join(str(d) for d in sorted(failed))
                host_lines.append(
                    f"hccs_ping {target}: no answer to any of devices {devs} (device {min(failed)}: "
                    f"{failed[min(failed)]}); the die that owns vNIC {target} or its HCCS link is down: check it with "
                    "`hccn_tool -i N -vnic -g` and `npu-smi info -t hccs` on its host")
                continue
            for dev, why in sorted(failed.items()):
                by_dev[dev]["problems"].append(
                    f"device {dev}: {why}; check this die's and the peer die's HCCS links (npu-smi info -t hccs)")
        return host_lines


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def default_checks(ping_targets: list[str], hccs_ping_targets: list[str] | None = None) -> list[str]:
    return BASE_CHECKS + (["ping"] if ping_targets else []) + (["hccs_ping"] if hccs_ping_targets else [])


def render_table(devices: list[dict]) -> list[str]:
    """Aligned lines an operator reads at a glance (ad hoc runs print them)."""
    def show(value):
        return "-" if value is None else str(value)

    rows = [("device", "link", "flaps", "tls", "ip", "net_health", "ping", "vnic", "hccs_ping", "result")]
    for dev in devices:
        pings = dev["ping"]
        ping = f"{sum(1 for p in pings if p['ok'])}/{len(pings)} ok" if pings else "-"
        flaps = "-" if dev["flapping"] is None else ("YES" if dev["flapping"] else "no")
        hccs = dev["hccs_ping"]
        hccs_cell = f"{sum(1 for p in hccs if p['ok'])}/{len(hccs)} ok" if hccs else (
            "n/a" if any(s.startswith("hccs_ping") for s in dev["skipped"]) else "-")
        vnic = "-" if dev["vnic_link"] is None else f"{dev['vnic_link']} {dev['vnic_ip']}"
        rows.append((dev["device"], show(dev["link"]), flaps, show(dev["tls_switch"]), show(dev["ip"]),
                     show(dev["net_health"]), ping, vnic, hccs_cell, "FAIL" if dev["problems"] else "ok"))
    return align_columns(rows)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            hccn_tool=dict(type="path"),
            hccn_conf=dict(type="path", default="/etc/hccn.conf"),
            devices=dict(type="list", elements="int"),
            checks=dict(type="list", elements="str", choices=ALL_CHECKS),
            ping_targets=dict(type="list", elements="str", default=[]),
            hccs_ping_targets=dict(type="list", elements="str", default=[]),
            hccs_ping_count=dict(type="int", default=3),
            link_flap_window=dict(type="int", default=86400),
            fix_tls=dict(type="bool", default=False),
            fail_on_problem=dict(type="bool", default=True),
            busy_retries=dict(type="int", default=5),
            busy_budget=dict(type="int", default=20),
            command_timeout=dict(type="int", default=15),
        ),
        supports_check_mode=True,
    )
    params = module.params
    checks = params["checks"] or default_checks(params["ping_targets"], params["hccs_ping_targets"])
    for check, option, hint in (("ping", "ping_targets", "hccn_tool pings device IPs such as 10.20.1.10"),
                                ("hccs_ping", "hccs_ping_targets", "hccs_ping pings vNIC IPs such as 192.1.2.199")):
        if check in checks and not params[option]:
            module.fail_json(msg=f"checks contains '{check}' but {option} is empty; list the IPs to ping")
        bad_targets = [t for t in params[option] if not is_ipv4(t)]
        if bad_targets:
            module.fail_json(msg=f"{option}: {', '.join(repr(t) for t in bad_targets)} not IPv4 address(es); {hint}")
    if not 1 <= params["hccs_ping_count"] <= 1000:
        module.fail_json(msg=f"hccs_ping_count must be within 1..1000 (what hccn_tool accepts), got "
                         f"{params['hccs_ping_count']}")
    negative = [k for k in ("link_flap_window", "busy_retries", "busy_budget") if params[k] < 0]
    if negative:
        module.fail_json(msg=f"{', '.join(negative)} must not be negative")
    if params["command_timeout"] < 1:
        module.fail_json(msg=f"command_timeout must be at least 1 (seconds), got {params['command_timeout']}")
    tool = resolve_tool(module, params["hccn_tool"], "hccn_tool", HCCN_TOOL_FALLBACK)

    conf: dict[int, dict[str, str]] = {}
    if os.path.isfile(params["hccn_conf"]):
        try:
            with open(params["hccn_conf"]) as handle:
                conf = parse_hccn_conf(handle.read())
        except (OSError, UnicodeDecodeError) as exc:
            module.fail_json(msg="cannot read {}: {}".format(params["hccn_conf"], exc))
    devices = params["devices"] if params["devices"] else (sorted(conf) or list(range(8)))
    bad = [d for d in devices if d < 0]
    if bad:
        module.fail_json(msg=f"devices must be physical ids >= 0, got {bad}")

    runner = ToolRunner(module, busy_marker=BUSY_MARKER, retries=params["busy_retries"],
                        timeout=params["command_timeout"], busy_budget=params["busy_budget"])
    checker = DeviceChecker(runner, tool, params["hccn_conf"], params, module.check_mode)
    results, changed, host_problems = [], False, []
    todo = sorted(set(devices))
    for index, dev in enumerate(todo):
        try:
            facts, dev_changed = checker.run(dev, [c for c in ALL_CHECKS if c in checks], conf.get(dev, {}))
        except HostAbort as exc:  # this device's record is incomplete: it counts as not checked
            rest = ", ".join(str(d) for d in todo[index:])
            host_problems.append(f"{exc}; devices {rest} not checked; stop other hccn_tool users on this host and "
                                 "run again")
            break
        results.append(facts)
        changed = changed or dev_changed
        reason = checker.stop_reason()
        if reason and todo[index + 1:]:
            rest = ", ".join(str(d) for d in todo[index + 1:])
            host_problems.append(f"hccn_tool: {reason}; devices {rest} not checked; fix the driver (dmesg, "
                                 "/var/log/hccn_tool/), then run again")
            break
    host_problems = checker.hccs_problem_lines(results) + host_problems
    problems = [p for dev in results for p in dev["problems"]] + host_problems
    if problems:
        failing = sum(1 for d in results if d["problems"]) + (len(set(devices)) - len(results))
        msg = f"hccn_check found {len(problems)} problem(s) on {failing} device(s):\n" + "\n".join(problems)
    else:
        msg = f"hccn_check: {len(results)} device(s) passed " + ", ".join(c for c in ALL_CHECKS if c in checks)
    output = dict(changed=changed, devices=results, problems=problems, msg=msg, table=render_table(results),
                  hccn_tool=tool)
    if problems and params["fail_on_problem"]:
        module.fail_json(**output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
