#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: npu_topology
short_description: Report the Ascend NPUs of a host, their ids, health and which are free
version_added: "0.1.0"
description:
  - Runs C(npu-smi info), C(npu-smi info -m) and C(npu-smi info -l) and joins them with
    C(/etc/hccn.conf) into one record per chip (per die on A3).
  - Tables are read by splitting rows on C(|), never by column offsets, so the drifting
    column widths of different driver versions are all understood.
  - A chip is busy when a process runs on it or more than O(busy_hbm_mb) of its HBM is in use.
  - Sets the fact C(npu) with the same data as the return values. Changes nothing on the host.
  - Output that cannot be trusted fails the module with one line naming the command and quoting an
    escaped excerpt. That is a table without chips or cut short, a logic id, NPU/Chip pair or Phy-ID
    listed twice, a chip missing from C(npu-smi info -m), binary junk, a crash, or a call that hangs
    past O(command_timeout). The module never raises.
  - An C(NA) HBM cell is reported as unknown (null), never as 0 MB; such a chip is not counted as
    free, and with O(require_free) it is a problem.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  npu_smi:
    description:
      - Path of C(npu-smi). When not set it is looked up on E(PATH), then at C(/usr/local/sbin/npu-smi).
    type: path
  hccn_conf:
    description:
      - Path of the HCCN configuration file; its C(address_N)/C(netmask_N) give each chip's device IP.
    type: path
    default: /etc/hccn.conf
  devices:
    description:
      - Physical ids of the chips to judge (health, and with O(require_free) whether they are free).
      - Default is every chip. Mutually exclusive with O(logic_ids).
    type: list
    elements: int
  logic_ids:
    description:
      - Logic ids of the chips to judge, as a deployment plan assigns them. Mutually exclusive with O(devices).
    type: list
    elements: int
  require_free:
    description:
      - Report a problem for every judged chip that is busy.
    type: bool
    default: false
  busy_hbm_mb:
    description:
      - A chip using more HBM than this many MB is busy even when no process is listed (another
        container may hold it). Idle 910B/910C chips use about 3 GB.
    type: int
    default: 8192
  command_timeout:
    description:
      - Seconds one C(npu-smi) call may take before it is killed (a hung driver must not hang the play).
        C(npu-smi info) answers in one or two seconds.
    type: int
    default: 30
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
notes:
  - Requires the Ascend driver; C(npu-smi) usually needs root.
"""

EXAMPLES = r"""
- name: Learn the NPUs of every Ascend host
  openfuyao.pd.npu_topology:
  register: topo

- name: Judge the chips a plan gives this host; busy ones are problems
  openfuyao.pd.npu_topology:
    logic_ids: [0, 1, 2, 3]
    require_free: true

- name: Use the free devices
  ansible.builtin.debug:
    msg: "free logic ids on {{ inventory_hostname }}: {{ ansible_facts.npu.free_logic_ids }}"

# Ad hoc: ansible npu -i cluster.ini -m openfuyao.pd.npu_topology
"""

RETURN = r"""
product:
  description: C(A2) (910B, 8 NPUs), C(A3) (Ascend910 / 910C, 8 cards x 2 dies) or C(other).
  returned: always
  type: str
  sample: A2
driver_version:
  description: Version printed in the C(npu-smi info) header.
  returned: always
  type: str
  sample: 24.1.rc3
chips:
  description: One entry per chip (die).
  returned: always
  type: list
  elements: dict
  contains:
    npu_id:
      description: NPU (card) id.
      type: int
    chip_id:
      description: Chip index on the card (0, or 0/1 on A3).
      type: int
    logic_id:
      description: Logic id (what C(ASCEND_RT_VISIBLE_DEVICES) counts).
      type: int
    phy_id:
      description: Physical id (the C(-i) of C(hccn_tool), C(/dev/davinciN)).
      type: int
    name:
      description: Chip name, for example C(910B4) or C(Ascend910).
      type: str
    health:
      description: C(OK), C(Warning), C(Alarm), C(Critical) or C(UNKNOWN).
      type: str
    bus_id:
      description: PCIe bus id.
      type: str
    aicore_pct:
      description: AI core usage in percent.
      type: int
    hbm_used_mb:
      description: HBM in use; null when npu-smi prints C(NA).
      type: int
    hbm_total_mb:
      description: HBM size; null when npu-smi prints C(NA).
      type: int
    processes:
      description: Processes on the chip, each with C(pid), C(name), C(memory_mb).
      type: list
      elements: dict
    device_ip:
      description: C(address_N) of this chip in O(hccn_conf), or null.
      type: str
    netmask:
      description: C(netmask_N) of this chip in O(hccn_conf), or null.
      type: str
    busy:
      description: Whether a process runs on the chip or its HBM use exceeds O(busy_hbm_mb).
      type: bool
  sample:
    - {npu_id: 2, chip_id: 0, logic_id: 2, phy_id: 2, name: 910B4, health: OK, bus_id: "0000:C2:00.0",
       aicore_pct: 0, hbm_used_mb: 2818, hbm_total_mb: 32768, processes: [], device_ip: 10.20.0.12,
       netmask: 255.255.255.0, busy: false}
free_logic_ids:
  description: Logic ids of chips that are healthy, not busy and whose HBM use is known.
  returned: always
  type: list
  elements: int
  sample: [2, 3, 4, 5]
healthy:
  description: Whether every judged chip reports health C(OK) and every card of C(npu-smi info -l) is in the table.
  returned: always
  type: bool
selected:
  description: Physical ids of the judged chips (all, or those of O(devices) / O(logic_ids)).
  returned: always
  type: list
  elements: int
  sample: [0, 1, 2, 3]
problems:
  description:
    - One line per unhealthy (or, with O(require_free), busy) judged chip, prefixed C(device N:) with the
      physical id, per requested id that does not exist, and per card missing from the table.
  returned: always
  type: list
  elements: str
table:
  description: A human-readable table, one line per chip.
  returned: always
  type: list
  elements: str
msg:
  description: One-line summary.
  returned: always
  type: str
ansible_facts:
  description: The same data under C(npu).
  returned: always
  type: dict
  contains:
    npu:
      description: C(product), C(driver_version), C(chips), C(free_logic_ids), C(healthy), C(selected), C(problems).
      type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.openfuyao.pd.plugins.module_utils.ascend_tool import (
    NPU_SMI_FALLBACK,
    ToolRunner,
    resolve_tool,
)
from ansible_collections.openfuyao.pd.plugins.module_utils.hccn_parse import ParseError, excerpt, parse_hccn_conf
from ansible_collections.openfuyao.pd.plugins.module_utils.text_table import align_columns
from ansible_collections.openfuyao.pd.plugins.module_utils.npu_smi_parse import (
    HEALTH_OK,
    build_chips,
    parse_info,
    parse_list,
    parse_mapping,
    product_of,
)


def run_npu_smi(module, runner: ToolRunner, tool: str, args: list[str]) -> str:
    result = runner.run([tool, *args])
    broken = result.broken(runner.timeout)
    if broken:
        module.fail_json(msg=broken, rc=result.rc, stdout=result.stdout, stderr=result.stderr, cmd=result.command)
    if result.rc != 0:
        module.fail_json(msg=f"`{result.command}` failed (rc={result.rc}): {excerpt(result.stdout + result.stderr)}; "
                         "is the Ascend driver loaded and are you root?",
                         rc=result.rc, stdout=result.stdout, stderr=result.stderr, cmd=result.command)
    return result.stdout


def select_chips(chips: list[dict], devices: list[int] | None, logic_ids: list[int] | None) -> tuple[list, list]:
    """The judged chips and one problem line per requested id that does not exist."""
    if devices:
        key, wanted, label = "phy_id", devices, "device"
    elif logic_ids:
        key, wanted, label = "logic_id", logic_ids, "logic id"
    else:
        return chips, []
    known = {c[key] for c in chips}
    listing = ", ".join(str(k) for k in sorted(known))
    missing = [f"{label} {i}: no such NPU on this host (npu-smi lists {label}s {listing})"
               for i in wanted if i not in known]
    return [c for c in chips if c[key] in wanted], missing


def plain(text: str) -> str:
    """Tool text as is when it is plain printable ASCII, else quoted with escapes (one line, UTF-8 safe)."""
    return text if text.isascii() and text.isprintable() else repr(text)


def hbm_text(chip: dict) -> str:
    def show(value):
        return "NA" if value is None else str(value)
    return f"{show(chip['hbm_used_mb'])}/{show(chip['hbm_total_mb'])}"


def busy_problem(chip: dict, busy_hbm_mb: int) -> str:
    procs = ", ".join(f"pid {p['pid']} {plain(p['name']) or '(no name)'}"
                      + (f" {p['memory_mb']} MB" if p["memory_mb"] is not None else "")
                      for p in chip["processes"])
    why = (f"{len(chip['processes'])} process(es): {procs}" if chip["processes"]
           else f"no process listed but HBM use is above {busy_hbm_mb} MB (another container?)")
    return (f"device {chip['phy_id']}: busy (logic id {chip['logic_id']}): {why}; HBM {hbm_text(chip)} MB in use; "
            "stop it or choose other devices")


def topology_problems(chips: list[dict], judged: list[dict], listed: dict, require_free: bool = False,
                      busy_hbm_mb: int = 0) -> list[str]:
    problems = []
    for c in judged:
        if c["health"] != HEALTH_OK:
            problems.append(f"device {c['phy_id']}: npu-smi health is {c['health']} (expected OK); see "
                            f"`npu-smi info -t health -i {c['npu_id']}`")
        elif require_free and c["busy"]:
            problems.append(busy_problem(c, busy_hbm_mb))
        elif require_free and c["hbm_used_mb"] is None:
            problems.append(f"device {c['phy_id']}: npu-smi info prints HBM usage {hbm_text(c)} (logic id "
                            f"{c['logic_id']}), so nobody can tell whether the chip is free; check "
                            f"`npu-smi info -t usages -i {c['npu_id']}` or choose other devices")
    seen = {c["npu_id"] for c in chips}
    missing = [card["npu_id"] for card in listed["cards"] if card["npu_id"] not in seen]
    if missing:
        lost = ", ".join(str(m) for m in missing)
        problems.append(f"npu-smi info -l lists NPU(s) {lost} that npu-smi info does not show; the device may be "
                        "lost (check dmesg, reset the NPU or reboot)")
    return problems


def render_table(chips: list[dict]) -> list[str]:
    rows = [("phy", "logic", "npu", "name", "health", "hbm MB", "device_ip", "state")]
    for c in chips:
        state = f"busy ({len(c['processes'])} proc)" if c["busy"] else "free"
        rows.append((c["phy_id"], c["logic_id"], f"{c['npu_id']}/{c['chip_id']}", c["name"], c["health"],
                     hbm_text(c), c["device_ip"] or "-", state))
    return align_columns(rows)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            npu_smi=dict(type="path"),
            hccn_conf=dict(type="path", default="/etc/hccn.conf"),
            devices=dict(type="list", elements="int"),
            logic_ids=dict(type="list", elements="int"),
            require_free=dict(type="bool", default=False),
            busy_hbm_mb=dict(type="int", default=8192),
            command_timeout=dict(type="int", default=30),
        ),
        mutually_exclusive=[("devices", "logic_ids")],
        supports_check_mode=True,
    )
    params = module.params
    if params["busy_hbm_mb"] < 0:
        module.fail_json(msg="busy_hbm_mb must not be negative")
    if params["command_timeout"] < 1:
        module.fail_json(msg=f"command_timeout must be at least 1 (seconds), got {params['command_timeout']}")
    tool = resolve_tool(module, params["npu_smi"], "npu-smi", NPU_SMI_FALLBACK)
    runner = ToolRunner(module, timeout=params["command_timeout"])
    info_text = run_npu_smi(module, runner, tool, ["info"])
    mapping_text = run_npu_smi(module, runner, tool, ["info", "-m"])
    list_text = run_npu_smi(module, runner, tool, ["info", "-l"])
    conf = {}
    if os.path.isfile(params["hccn_conf"]):
        try:
            with open(params["hccn_conf"]) as handle:
                conf = parse_hccn_conf(handle.read())
        except (OSError, UnicodeDecodeError) as exc:
            module.fail_json(msg="cannot read {}: {}".format(params["hccn_conf"], exc))
    try:
        info = parse_info(info_text, tool + " info")
        mapping = parse_mapping(mapping_text, tool + " info -m")
        listed = parse_list(list_text, tool + " info -l")
        chips = build_chips(info, mapping, conf, params["busy_hbm_mb"], tool + " info -m")
    except ParseError as exc:
        module.fail_json(msg=str(exc), stdout=exc.output)
    except Exception as exc:  # last line of defence: never a traceback for odd tool output
        module.fail_json(msg=f"npu_topology could not judge the output of `{tool} info`/`info -m`/`info -l` "
                         f"({type(exc).__name__}: {excerpt(str(exc))}); please report this with the tool's output")
    report(module, params, info, chips, listed)


def report(module, params: dict, info: dict, chips: list[dict], listed: dict) -> None:
    judged, missing = select_chips(chips, params["devices"], params["logic_ids"])
    problems = missing + topology_problems(chips, judged, listed, params["require_free"], params["busy_hbm_mb"])
    # The lost-card line is about the whole host; it stays even when only some chips are judged.
    healthy = not any(c["health"] != HEALTH_OK for c in judged) and not any(p.startswith("npu-smi") for p in problems)
    free = [c["logic_id"] for c in chips if c["health"] == HEALTH_OK and not c["busy"] and c["hbm_used_mb"] is not None]
    facts = dict(product=product_of(info), driver_version=info["version"] or "unknown", chips=chips,
                 free_logic_ids=free, healthy=healthy, selected=[c["phy_id"] for c in judged], problems=problems)
    verdict = "ok" if not problems else f"{len(problems)} problem(s): " + "; ".join(problems)
    msg = (f"{facts['product']}, driver {facts['driver_version']}: {len(chips)} chip(s), {len(free)} free, "
           f"{len(judged)} judged: {verdict}")
    module.exit_json(changed=False, msg=msg, table=render_table(chips), ansible_facts=dict(npu=facts), **facts)


if __name__ == "__main__":
    main()
