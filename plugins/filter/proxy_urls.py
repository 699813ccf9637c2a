# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The base URL of every planned proxy, as another host of the deployment reaches it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_url import WILDCARDS
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_url import url_host as _url_host

DOCUMENTATION = r"""
---
name: proxy_urls
short_description: The base URL of every planned proxy, as the deployment's hosts reach it
version_added: "0.1.0"
description:
  - One C(http://HOST:PORT) per entry of C(pd_plan.proxies), in plan order.
  - A proxy that listens on its planned address is reached there. One whose address is a wildcard
    (C(0.0.0.0), C(::) or empty) is reached at its host's C(ansible_host), else the host's name.
  - An IPv6 address is put in brackets (the C(openfuyao.pd.url_host) filter).
positional: hostvars
options:
  _input:
    description: The planned proxies (C(pd_plan.proxies)), each with C(host), C(address) and C(port).
    type: list
    elements: dict
    required: true
  hostvars:
    description: C(hostvars), for the C(ansible_host) of a proxy that listens on every address.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Tell the KV watchdog every proxy to drain through
  ansible.builtin.set_fact:
    _watchdog_proxies: "{{ pd_plan.proxies | openfuyao.pd.proxy_urls(hostvars) }}"
"""

RETURN = r"""
_value:
  description: The proxies' base URLs, without a trailing slash.
  type: list
  elements: str
"""


def proxy_url(proxy: Mapping[str, Any], hostvars: Mapping[str, Mapping[str, Any]]) -> str:
    address = str(proxy.get("address") or "")
    reach = None
    if address in WILDCARDS:
        reach = str((hostvars.get(proxy["host"]) or {}).get("ansible_host", proxy["host"]))
    try:
        return f"http://{_url_host(address, reach)}:{proxy['port']}"
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


def proxy_urls(proxies: Sequence[Mapping[str, Any]], hostvars: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [proxy_url(p, hostvars) for p in proxies]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"proxy_urls": proxy_urls}
