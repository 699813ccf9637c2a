# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The preflight report entry of one host (its checks and problem lines) from what each check step saw."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_preflight

DOCUMENTATION = r"""
---
name: preflight_findings
short_description: The checks and problem lines of one host's preflight, from its steps' records
version_added: "0.1.0"
description:
  - The role C(openfuyao.pd.preflight) keeps one record per check step of a host (what the step's modules
    returned and the settings its verdict depends on); this filter decides every check's status and detail and
    every problem line, each line prefixed with the host.
  - Steps, in the order their checks are listed; a step that is missing or null did not run and adds nothing.
  - C(inventory) C({platform, runtime, ports}) gives lines for a platform other than ascend, cuda or cpu, a runtime
    other than host or container, port items without an integer start and ranges outside 1-65535 (no check).
  - C(topology) C({result}) (C(npu_topology)) and C(devices) C({result}) (C(hccn_check)) are a check each; a module
    that did not report is one line, C(npu) then the module and what it said.
  - C(ping) and C(hccs) C({result, targets}) are the ping and HCCS meshes, C(skip) when the ping did not run.
  - C(product) C({product, group, members}) (C(members) maps each NPU host of the P2P group to its product) fails
    when the group holds A2 and A3 hosts, with the one line on the group's first host.
  - C(no_npu) C({platform}) notes that a host other than ascend skips the NPU checks.
  - C(host) C({probe, probe_again, mount_run, storage_path, storage_fstype, mount_command, disk_min_free_gb, ports})
    gives the storage, disk, ports and container runtime checks of C(pd_host_probe) (each carries its problem
    line as C(problem)); one with nothing to judge is left out.
  - C(firewall) C({state, firewall, ports}) notes what was done about firewalld.
  - C(failure) C({task, result}) is a check task that failed (the role's rescue), one line naming the task.
positional: host
options:
  _input:
    description: The step records by step name.
    type: dict
    required: true
  host:
    description: The host the records belong to (the prefix of every problem line).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Close this host's record
  ansible.builtin.set_fact:
    _preflight_entry: "{{ {'host': inventory_hostname} | combine(_steps | openfuyao.pd.preflight_findings(inventory_hostname)) }}"
  vars:
    _steps:
      inventory: {platform: npu, runtime: host, ports: []}
      no_npu: {platform: npu}
    # {'host': 'node1', 'checks': [{'check': 'npu', 'status': 'skip', 'detail': 'platform is npu, not ascend: NPU checks
    #  skipped'}], 'problems': ['node1: pd_platform: "npu" is not one of ascend, cuda, cpu; fix the inventory']}
"""

RETURN = r"""
_value:
  description: The host's report entry without its name.
  type: dict
  contains:
    checks:
      description: One C({check, status, detail}) per check, C(status) one of pass, fail, skip.
      type: list
      elements: dict
    problems:
      description: One line per problem, each starting with the host name, a colon and a space.
      type: list
      elements: str
"""


def preflight_findings(steps: Mapping[str, Any], host: str) -> dict[str, list[Any]]:
    if not isinstance(steps, Mapping):
        raise AnsibleFilterError(f"preflight_findings: the steps must be a dict by step name, got {type(steps).__name__}")
    try:
        return pd_preflight.findings(steps, host)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"preflight_findings": preflight_findings}
