# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""A host or address as it goes into a URL: IPv6 in brackets, a wildcard bind address replaced."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_url

DOCUMENTATION = r"""
---
name: url_host
short_description: A host or address in the form a URL takes it
version_added: "0.1.0"
description:
  - An IPv6 address is put in square brackets (C(fd00::1) -> C([fd00::1])); one already in brackets is
    returned unchanged. An IPv4 address or a host name is returned unchanged.
  - A wildcard bind address (C(0.0.0.0), C(::), C([::]) or empty) cannot be connected to. With
    O(wildcard_host) it is replaced by that host (itself put in URL form), so a client reaches a service
    that listens on every address; without it C(0.0.0.0) and C(::) are kept (C([::])) and an empty
    value is an error.
  - Anything else (not a string, white space, a C(host:port), an IPv4 address in brackets, an address
    or host name the planner would refuse) fails, naming the value.
positional: wildcard_host
options:
  _input:
    description: The host name or IP address.
    type: str
    required: true
  wildcard_host:
    description: The host to use in place of a wildcard bind address, e.g. C(127.0.0.1) on the host itself.
    type: str
    required: false
"""

EXAMPLES = r"""
- name: Ask the proxy for its health on its own host (a wildcard bind through loopback)
  ansible.builtin.uri:
    url: "http://{{ _proxy_listen | openfuyao.pd.url_host('127.0.0.1') }}:{{ _proxy_mine.port }}/health"

- name: Complete through the virtual IP
  ansible.builtin.uri:
    url: "http://{{ pd_plan.proxy_vip.address | openfuyao.pd.url_host }}:{{ pd_plan.endpoint.port }}/v1/completions"
"""

RETURN = r"""
_value:
  description: The host for a URL, e.g. C(10.0.0.1), C(node1), C([fd00::1]).
  type: str
"""

WILDCARDS = pd_url.WILDCARDS


def url_host(host: Any, wildcard_host: str | None = None) -> str:
    """``host`` as the host part of a URL; a wildcard bind address becomes ``wildcard_host`` when given."""
    try:
        return pd_url.url_host(host, wildcard_host)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"url_host": url_host}
