# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The status document of status.yml: one table of every instance, the proxy's view, the problems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_day2 import Day2InputError, run

DOCUMENTATION = r"""
---
name: day2_status
short_description: The status table of every instance, the proxy's view of its backends and the problems found
version_added: "0.1.0"
description:
  - Combines the plan, each host's M(openfuyao.pd.pd_service_probe) result and the proxy's answers into one
    table (host, instance, role, devices, ports, service, restarts, last exit, health, model, versions,
    uptime, proxy view) and a list of problems, each one line naming the instance or host and the fix.
  - Input that is not a plan fails the task with one line naming the filter and the fix.
positional: probes, proxy
options:
  _input:
    description: The plan (C(pd_plan)).
    type: dict
    required: true
  probes:
    description: Each host's registered M(openfuyao.pd.pd_service_probe) result, by inventory host name; a missing host counts as not probed.
    type: dict
    default: {}
  proxy:
    description:
      - The proxy's view, with C(instances) (C(GET /v1/instances)), C(health) (C(GET /health)), C(error) (why it did
        not answer, or null) and its service's C(state), C(uptime), C(restarts) and C(last_exit).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Compute the status
  ansible.builtin.set_fact:
    _day2_status_doc: "{{ pd_plan | openfuyao.pd.day2_status({inventory_hostname: probe}, {'health': {'status': 'ok'}}) }}"

- name: Show the status
  ansible.builtin.debug:
    msg: "{{ _day2_status_doc.table }}"
"""

RETURN = r"""
_value:
  description: The status document (what C(day2_status_output) writes as JSON).
  type: dict
  contains:
    table:
      description: The table, the proxy's line and the problems, as one text.
      type: str
    lines:
      description: The same text, line by line.
      type: list
      elements: str
    problems:
      description: One line per problem found; empty when none.
      type: list
      elements: str
    rows:
      description: The table's rows, cell by cell.
      type: list
      elements: list
"""


def day2_status(
    plan: Mapping[str, Any],
    probes: Mapping[str, Any] | None = None,
    proxy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    try:
        return run("status", {"plan": plan, "probes": probes or {}, "proxy": proxy or {}})
    except Day2InputError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"day2_status": day2_status}
