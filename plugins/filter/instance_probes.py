# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""What status.yml probes per instance of a host: its health URL and its service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: instance_probes
short_description: The status probe entries of the plan's instances on one host
version_added: "0.1.0"
description:
  - Keeps of each instance what the day-2 helper's C(probe) reads, its name, health URL and service name.
positional: prefix
options:
  _input:
    description: Instances of the plan, each with C(name) and C(health_url).
    type: list
    elements: dict
    required: true
  prefix:
    description: Prefix of every service name (C(openfuyao-pd-)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Show what status.yml probes here
  ansible.builtin.debug:
    msg: "{{ pd_plan.instances | selectattr('host', 'equalto', inventory_hostname) | openfuyao.pd.instance_probes('openfuyao-pd-') }}"
"""

RETURN = r"""
_value:
  description: One dict per instance with C(name), C(health_url) and C(service).
  type: list
  elements: dict
"""


def instance_probes(instances: Sequence[Mapping[str, Any]], prefix: str) -> list[dict[str, str]]:
    return [{"name": i["name"], "health_url": i["health_url"], "service": f"{prefix}{i['name']}"} for i in instances]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"instance_probes": instance_probes}
