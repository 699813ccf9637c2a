#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pd_host_probe
short_description: Read whether shared storage is mounted, disk space, free ports and the container engine
version_added: "0.1.0"
description:
  - Reads the facts the preflight role judges on one host; changes nothing.
  - With O(storage_path), finds the mount of exactly that path in C(/proc/mounts) (the last one
    wins for stacked mounts).
  - With O(disk_path), reads the free space of the filesystem holding that path, or its closest
    existing parent when the directory is not created yet.
  - Tests every port of O(ports) by binding it on all IPv4 and IPv6 addresses, or on
    O(ports[].address) when given, which is what the service will do;
    that also catches listeners hidden from C(ss) in other network namespaces sharing the host
    network. Ranges of O(ports[].kind=pool) are skipped (a library picks ports from them at
    random, so they need not be entirely free).
  - With O(container_engine), runs C(ENGINE version) and reports whether it answered.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  storage_path:
    description:
      - Absolute mount point of the shared storage to look up. Not looked up when not set.
    type: path
  disk_path:
    description:
      - Absolute path whose filesystem's free space is read. Not read when not set.
    type: path
  ports:
    description:
      - TCP port ranges whose ports must be free.
      - Ports outside 1-65535 are not tried (bind() cannot), and a range that ends before it
        starts has no port to try; the preflight role reports both itself.
    type: list
    elements: dict
    default: []
    suboptions:
      start:
        description: First port of the range.
        type: int
        required: true
      end:
        description: Last port of the range; O(ports[].start) when not set.
        type: int
      purpose:
        description: What the range is for; copied into the result.
        type: str
        default: ""
      kind:
        description:
          - How the service uses the range, from the plan. V(pool) ranges are not checked;
            any other value is checked like a range without a kind.
        type: str
      owner:
        description: The plan's owner of the range (an instance, V(proxy), V(mooncake_master)); copied into the result.
        type: str
      use:
        description: The plan's word for how the owner uses the range; accepted so that a plan's port claim passes unchanged.
        type: str
      var:
        description: The inventory variable that sets the range; copied into the result, so a report can name what to change.
        type: str
      address:
        description:
          - The address the service will bind, tested as the service will bind it (V(0.0.0.0), V(::) or one
            address; an address the host does not have is reported as such). Without it the port must be free on
            every IPv4 and IPv6 address. Copied into the result.
        type: str
  container_engine:
    description:
      - Container engine that must answer C(version). Not checked when not set.
    type: str
    choices: [docker, podman]
  command_timeout:
    description:
      - Seconds the C(version) call of O(container_engine) may take before it counts as not answering.
    type: int
    default: 30
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: The module only reads, so it runs in check mode too and returns the same findings.
  diff_mode:
    support: none
notes:
  - Binding a port that another process holds fails without disturbing that process.
"""

EXAMPLES = r"""
- name: Probe the shared storage, the image disk, two ports and docker
  openfuyao.pd.pd_host_probe:
    storage_path: /mnt/models
    disk_path: /var/lib
    ports:
      - {start: 8100, end: 8100, purpose: prefill-0 http}
      - {start: 20000, end: 20100, purpose: transfer engine rpc, kind: pool}
    container_engine: docker
  register: probe

- name: Only look at the mount again
  openfuyao.pd.pd_host_probe:
    storage_path: /mnt/models
"""

RETURN = r"""
mount:
  description: The mount of O(storage_path).
  returned: when O(storage_path) is set
  type: dict
  contains:
    path:
      description: O(storage_path) as given.
      type: str
    exists:
      description: Whether the path is a directory.
      type: bool
    mounted:
      description: Whether something is mounted exactly there.
      type: bool
    source:
      description: What is mounted there (for example C(server:/export)); null when nothing is.
      type: str
    fstype:
      description: Filesystem type of that mount; null when nothing is mounted.
      type: str
  sample: {path: /mnt/models, exists: true, mounted: true, source: "10.0.0.5:/models", fstype: nfs4}
disk:
  description: Free space at O(disk_path).
  returned: when O(disk_path) is set
  type: dict
  contains:
    path:
      description: O(disk_path) as given.
      type: str
    checked_path:
      description: The closest existing path whose filesystem was read.
      type: str
    free_gb:
      description: Free space in GB (10^9 bytes), one decimal.
      type: float
    total_gb:
      description: Size of the filesystem in GB, one decimal.
      type: float
  sample: {path: /var/lib/images, checked_path: /var/lib, free_gb: 120.4, total_gb: 480.0}
ports:
  description: One entry per checked range of O(ports), ranges without a kind first.
  returned: always
  type: list
  elements: dict
  contains:
    start:
      description: First port.
      type: int
    end:
      description: Last port.
      type: int
    purpose:
      description: O(ports[].purpose).
      type: str
    owner:
      description: O(ports[].owner), when given.
      type: str
    var:
      description: O(ports[].var), when given.
      type: str
    address:
      description: O(ports[].address), when given.
      type: str
    busy:
      description: Ports that could not be bound, as strings, each with the reason (C(in use) or the error).
      type: dict
  sample: [{start: 8100, end: 8100, purpose: prefill-0 http, busy: {"8100": in use}}]
busy:
  description: Every port of RV(ports) that could not be bound, one entry each, in the order of RV(ports).
  returned: always
  type: list
  elements: dict
  contains:
    port:
      description: The port.
      type: int
    reason:
      description: C(in use), C(not an address of this host) or the bind() error.
      type: str
    purpose:
      description: The purpose of its range.
      type: str
    owner:
      description: The owner of its range, when given.
      type: str
    var:
      description: The variable that sets its range, when given.
      type: str
    address:
      description: The address of its range, when given.
      type: str
  sample: [{port: 8100, reason: in use, purpose: http, owner: decode-0, address: 127.0.0.1}]
engine:
  description: Whether O(container_engine) answered C(version).
  returned: when O(container_engine) is set
  type: dict
  contains:
    engine:
      description: O(container_engine).
      type: str
    path:
      description: Where the engine was found; null when not found.
      type: str
    ok:
      description: Whether C(version) exited 0.
      type: bool
    detail:
      description: Why it did not answer (last line of its output); empty when it did.
      type: str
  sample: {engine: docker, path: /usr/bin/docker, ok: true, detail: ""}
"""

import os
import shutil
import socket
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.openfuyao.pd.plugins.module_utils.host_probe import (
    bad_params,
    bind_error_reason,
    bind_targets,
    busy_ports,
    disk_report,
    engine_report,
    find_mount,
    nearest_existing,
    ports_of,
    range_report,
    ranges_to_check,
)

ARGUMENT_SPEC = dict(
    storage_path=dict(type="path"),
    disk_path=dict(type="path"),
    ports=dict(type="list", elements="dict", default=[], options=dict(
        start=dict(type="int", required=True),
        end=dict(type="int"),
        purpose=dict(type="str", default=""),
        kind=dict(type="str"),
        owner=dict(type="str"),
        use=dict(type="str"),
        var=dict(type="str"),
        address=dict(type="str"),
    )),
    container_engine=dict(type="str", choices=["docker", "podman"]),
    command_timeout=dict(type="int", default=30),
)


def port_busy(port: int, address: str | None = None) -> str | None:
    """None when a service can bind ``port`` on ``address`` (all addresses when none), else the reason."""
    targets = bind_targets(address)
    wildcard = len(targets) > 1
    for ipv6, addr in targets:
        try:
            sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ipv6 and wildcard:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError as exc:
            reason = bind_error_reason(exc.errno, exc.strerror, ipv6, wildcard)
            if reason:
                return reason
        finally:
            sock.close()
    return None


def engine_version(module: AnsibleModule, engine: str, timeout: int) -> dict:
    path = module.get_bin_path(engine)
    if not path:
        return engine_report(engine, None, None, "", "")
    # subprocess for its timeout (run_command has none): a hung daemon must not hang preflight.
    try:
        proc = subprocess.run([path, "version"], capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(os.environ, LC_ALL="C"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"engine": engine, "path": path, "ok": False, "detail": str(exc)}
    return engine_report(engine, path, proc.returncode, proc.stdout, proc.stderr)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    problem = bad_params(params)
    if problem:
        module.fail_json(msg=problem)
    if params["command_timeout"] < 1:
        module.fail_json(msg=f"command_timeout must be at least 1 (seconds), got {params['command_timeout']}; "
                         "give the seconds docker/podman version may take")
    result = {"changed": False}
    if params["storage_path"]:
        try:
            with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as handle:
                mounts = handle.read()
        except OSError as exc:
            module.fail_json(msg=f"cannot read /proc/mounts to look up storage_path: {exc}")
        path = params["storage_path"]
        result["mount"] = find_mount(path, mounts, os.path.isdir(path))
    if params["disk_path"]:
        checked = nearest_existing(params["disk_path"], os.path.exists)
        usage = shutil.disk_usage(checked)
        result["disk"] = disk_report(params["disk_path"], checked, usage.free, usage.total)
    ranges = []
    for item in ranges_to_check(params["ports"]):
        busy = {}
        for port in ports_of(item):
            reason = port_busy(port, item.get("address"))
            if reason:
                busy[port] = reason
        ranges.append(range_report(item, busy))
    result["ports"] = ranges
    result["busy"] = busy_ports(ranges)
    if params["container_engine"]:
        result["engine"] = engine_version(module, params["container_engine"], params["command_timeout"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
