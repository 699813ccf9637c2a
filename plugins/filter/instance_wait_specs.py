# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""What the health gate of roles/vllm_pd waits for, per instance of this host."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: instance_wait_specs
short_description: The health-gate entries of the plan's instances on one host
version_added: "0.1.0"
description:
  - Turns instances of the plan into the list that the C(wait) entry point of C(openfuyao.pd.vllm_pd)
    takes. An instance is ready when both its health URL and C(/v1/models) under the same base answer.
  - Its C(alive_cmd) is the given command with the instance's service name appended, so the gate stops
    waiting as soon as the service has exited.
positional: prefix, log_dir, alive_cmd
options:
  _input:
    description: Instances of the plan, each with C(name) and C(health_url) (ending in C(/health)).
    type: list
    elements: dict
    required: true
  prefix:
    description: Prefix of every service name (C(openfuyao-pd-)).
    type: str
    required: true
  log_dir:
    description: Directory of the services' log files (the plan's C(hosts[HOST].dirs.log)).
    type: str
    required: true
  alive_cmd:
    description: The argv, without the service name, that exits non-zero once a service is down.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Wait for the instances to serve
  ansible.builtin.include_tasks: wait.yml
  vars:
    _vllm_pd_wait_services: >-
      {{ _vllm_pd_instances | openfuyao.pd.instance_wait_specs('openfuyao-pd-', _vllm_pd_dirs.log, service_alive_cmd) }}
"""

RETURN = r"""
_value:
  description: One dict per instance with C(name), C(urls), C(log) and C(alive_cmd).
  type: list
  elements: dict
"""


def _base_url(health_url: str) -> str:
    return health_url[: -len("/health")] if health_url.endswith("/health") else health_url


def instance_wait_specs(
    instances: Sequence[Mapping[str, Any]], prefix: str, log_dir: str, alive_cmd: Sequence[str]
) -> list[dict[str, Any]]:
    return [
        {
            "name": i["name"],
            "urls": [i["health_url"], _base_url(i["health_url"]) + "/v1/models"],
            "log": f"{log_dir}/{i['name']}.log",
            "alive_cmd": [*alive_cmd, f"{prefix}{i['name']}"],
        }
        for i in instances
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"instance_wait_specs": instance_wait_specs}
