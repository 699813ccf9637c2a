# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The supervised services (one per instance of this host) that roles/vllm_pd runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: instance_services
short_description: The service entries of the plan's instances on one host
version_added: "0.1.0"
description:
  - Turns instances of the plan (C(pd_plan.instances) of one host) into the service list that the
    C(service) entry point of C(openfuyao.pd.vllm_pd) supervises, one service per instance.
  - The command is the instance's launch script in its configuration directory, C(container.sh)
    for runtime C(container) and C(run.sh) otherwise; the log is C(<log_dir>/<instance>.log).
positional: prefix, conf_dir, log_dir, runtime
options:
  _input:
    description: Instances of the plan, each with C(name) and C(role).
    type: list
    elements: dict
    required: true
  prefix:
    description: Prefix of every service name (C(openfuyao-pd-)).
    type: str
    required: true
  conf_dir:
    description: The configuration directory that holds C(instances/<name>/) (the plan's C(hosts[HOST].dirs.conf)).
    type: str
    required: true
  log_dir:
    description: Directory of the services' log files (the plan's C(hosts[HOST].dirs.log)).
    type: str
    required: true
  runtime:
    description: C(host) or C(container).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Run the instances as services
  ansible.builtin.include_tasks: service.yml
  vars:
    _vllm_pd_services: >-
      {{ _vllm_pd_instances | openfuyao.pd.instance_services('openfuyao-pd-', _vllm_pd_dirs.conf,
                                                             _vllm_pd_dirs.log, _vllm_pd_runtime) }}
"""

RETURN = r"""
_value:
  description: One dict per instance with C(name), C(command), C(log) and C(description).
  type: list
  elements: dict
"""


def instance_services(
    instances: Sequence[Mapping[str, Any]], prefix: str, conf_dir: str, log_dir: str, runtime: str
) -> list[dict[str, str]]:
    script = "container.sh" if runtime == "container" else "run.sh"
    return [
        {
            "name": f"{prefix}{i['name']}",
            "command": f"{conf_dir}/instances/{i['name']}/{script}",
            "log": f"{log_dir}/{i['name']}.log",
            "description": f"openfuyao.pd {i['role']} instance {i['name']}",
        }
        for i in instances
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"instance_services": instance_services}
