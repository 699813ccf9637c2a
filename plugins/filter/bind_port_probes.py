# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The ports the preflight of roles/vllm_pd probes: every bind range of the instances that do not run yet."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: bind_port_probes
short_description: One probe per port an instance of this host will bind
version_added: "0.1.0"
description:
  - Turns every port range of kind C(bind) (the default kind) of the given instances into one port claim for
    the openfuyao.pd.pd_host_probe module, with the instance as owner and its bind address. Instances whose
    service already runs are left out, since on a re-run they hold their own ports.
  - Port claims of another kind (e.g. C(connect), a port the instance only dials) are not probed.
positional: running, prefix
options:
  _input:
    description: Instances of the plan, each with C(name), C(address) and C(ports) (C(start), C(end), C(purpose), C(kind)).
    type: list
    elements: dict
    required: true
  running:
    description: Names of the services that run on this host now.
    type: list
    elements: str
    required: true
  prefix:
    description: Prefix of every service name (C(openfuyao-pd-)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Probe the ports
  openfuyao.pd.pd_host_probe:
    ports: "{{ _vllm_pd_instances | openfuyao.pd.bind_port_probes(service_running, 'openfuyao-pd-') }}"
"""

RETURN = r"""
_value:
  description: One dict per range with C(start), C(end), C(purpose), C(owner) (the instance) and C(address).
  type: list
  elements: dict
"""


def bind_port_probes(
    instances: Sequence[Mapping[str, Any]], running: Collection[str], prefix: str
) -> list[dict[str, Any]]:
    return [
        {"start": int(p["start"]), "end": int(p.get("end", p["start"])), "purpose": p["purpose"],
         "owner": i["name"], "address": i["address"]}
        for i in instances
        if f"{prefix}{i['name']}" not in running
        for p in i["ports"]
        if p.get("kind", "bind") == "bind"
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"bind_port_probes": bind_port_probes}
