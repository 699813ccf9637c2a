# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Where the service of a backend that scale-in removes runs: the inventory hosts its URL names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

DOCUMENTATION = r"""
---
name: removed_backend_hosts
short_description: The inventory hosts that run the services of removed proxy backends
version_added: "0.1.0"
description:
  - A backend is known to the proxy by its URL only. Its host is every inventory host whose address is the
    URL's host name, where several share one address the service is stopped on whichever has it.
  - A host's address is its planned address when the plan has the host, else C(pd_address), else
    C(ansible_host), else its name; C(localhost), C(::1) and a local-connection host without
    C(pd_address) count as C(127.0.0.1), as the planner counts them.
  - Each entry says how to stop the service there, the host's supervisord configuration file
    (C(vllm_pd_conf_dir)) or systemd (the host's detected C(_day2_service_manager)).
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
    description: C(pd_plan.hosts), the planned hosts with their C(address).
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

_LOOPBACK = "127.0.0.1"


def host_address(host: str, hv: Mapping[str, Any], plan_hosts: Mapping[str, Any]) -> str:
    """The address by which a proxy backend URL names this inventory host."""
    if host in plan_hosts:
        addr = plan_hosts[host]["address"]
    else:
        addr = hv.get("pd_address", hv.get("ansible_host", host))
    local_only = host not in plan_hosts and hv.get("ansible_connection", "") == "local" and "pd_address" not in hv
    return _LOOPBACK if addr in ("localhost", "::1") or local_only else addr


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
            "conf": f"{hostvars[h].get('vllm_pd_conf_dir', '/etc/openfuyao-pd')}/supervisord.conf",
            "systemd": hostvars[h].get("_day2_service_manager", "supervisord") == "systemd",
        }
        for b in removed
        for h in hostnames
        if addresses[h] == urlsplit(b["url"]).hostname
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"removed_backend_hosts": removed_backend_hosts}
