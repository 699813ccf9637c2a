# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Where the service of a backend that scale-in removes runs: the inventory hosts its URL names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import dir_value
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import host_address as _planned_address
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_vars import DIR_VARS

DOCUMENTATION = r"""
---
name: removed_backend_hosts
short_description: The inventory hosts that run the services of removed proxy backends
version_added: "0.1.0"
description:
  - A backend is known to the proxy by its URL only. Its host is every inventory host whose address is the
    URL's host name, where several share one address the service is stopped on whichever has it.
  - A host's address is its planned address (C(pd_plan.hosts[HOST].address)) when the plan has the
    host; a host the plan no longer has (scaled in, e.g. kept under C([retired])) gets the address
    the planner would give it (the planner's own rule, C(host_address) in module_utils/pd_plan.py).
  - Each entry says how to stop the service there, the host's supervisord configuration file
    (the plan's C(dirs.conf); for a host the plan no longer has, the one the planner would give it
    from its C(vllm_pd_conf_dir), by the planner's own rule, C(dir_value) in module_utils/pd_plan.py)
    or systemd (the host's detected C(service_manager)).
positional: hostnames, hostvars, plan_hosts
options:
  _input:
    description: The removed backends, each with C(name) and C(url).
    type: list
    elements: dict
    required: true
  hostnames:
    description: The inventory hosts to consider (C(groups['all'])).
    type: list
    elements: str
    required: true
  hostvars:
    description: C(hostvars).
    type: dict
    required: true
  plan_hosts:
    description: C(pd_plan.hosts), the planned hosts with their C(address) and C(dirs).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Find the hosts of the removed instances
  ansible.builtin.set_fact:
    _day2_stop_targets: "{{ _day2_diff.removed | openfuyao.pd.removed_backend_hosts(groups['all'], hostvars, pd_plan.hosts) }}"
"""

RETURN = r"""
_value:
  description: One dict per backend and host with C(name), C(host), C(conf) and C(systemd) (bool).
  type: list
  elements: dict
"""


def host_address(host: str, hv: Mapping[str, Any], plan_hosts: Mapping[str, Any]) -> str:
    """The address by which a proxy backend URL names this inventory host."""
    if host in plan_hosts:
        return plan_hosts[host]["address"]
    return _planned_address(host, hv)[0]


def _conf_dir(host: str, hv: Mapping[str, Any], plan_hosts: Mapping[str, Any]) -> str:
    """The plan's conf directory of a planned host; for another, the one the planner would give it."""
    if host in plan_hosts:
        return plan_hosts[host]["dirs"]["conf"]
    return dir_value(DIR_VARS["conf"], hv.get(DIR_VARS["conf"].var))


def removed_backend_hosts(
    removed: Sequence[Mapping[str, Any]],
    hostnames: Sequence[str],
    hostvars: Mapping[str, Mapping[str, Any]],
    plan_hosts: Mapping[str, Any],
) -> list[dict[str, Any]]:
    addresses = {h: host_address(h, hostvars[h], plan_hosts) for h in hostnames}
    return [
        {
            "name": b["name"],
            "host": h,
            "conf": f"{_conf_dir(h, hostvars[h], plan_hosts)}/supervisord.conf",
            "systemd": hostvars[h].get("service_manager", "supervisord") == "systemd",
        }
        for b in removed
        for h in hostnames
        if addresses[h] == urlsplit(b["url"]).hostname
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"removed_backend_hosts": removed_backend_hosts}
