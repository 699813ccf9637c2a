# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""A host in the form it takes inside a URL (IPv6 in brackets, a wildcard bind replaced).

Shared by the url_host and proxy_urls filters: a filter plugin cannot import another filter plugin
(Ansible loads them under names of its own), so the rule lives here. Errors are ValueError; the
filters turn them into AnsibleFilterError with the same text.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_checks import address_problem

WILDCARDS = ("0.0.0.0", "::", "[::]", "")


def _fail(host: Any, why: str) -> ValueError:
    return ValueError(f"url_host: {host!r} {why}")


def _ipv6(text: str) -> bool:
    return ":" in text and address_problem(text) is None


def url_host(host: Any, wildcard_host: str | None = None) -> str:
    """``host`` as the host part of a URL; a wildcard bind address becomes ``wildcard_host`` when given."""
    if not isinstance(host, str):
        raise _fail(host, f"is not a host name or IP address (a string), got {type(host).__name__}")
    if host in WILDCARDS and wildcard_host is not None:
        if wildcard_host in WILDCARDS:
            raise _fail(wildcard_host, f"cannot replace the wildcard address {host!r}: it is a wildcard itself")
        return url_host(wildcard_host)
    if host == "":
        raise _fail(host, "is empty: give a host name or IP address, or a wildcard_host to use in its place")
    if host.startswith("[") or host.endswith("]"):
        if host.startswith("[") and host.endswith("]") and _ipv6(host[1:-1]):
            return host
        raise _fail(host, "is not an IPv6 address in brackets ([fd00::1])")
    if ":" in host:
        if _ipv6(host):
            return f"[{host}]"
        raise _fail(host, "is not an IPv6 address (a host:port? give the host only)")
    if address_problem(host) is not None:
        raise _fail(host, "is not an IP address or host name")
    return host
