# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""What is wrong with the proxy hosts' VRRP password, as one line that never shows the password."""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = r"""
---
name: vrrp_pass_problem
short_description: The problem with the VRRP password of the proxy hosts, or an empty string
version_added: "0.1.0"
description:
  - keepalived's PASS authentication compares the first 8 characters of C(auth_pass) and reads C(#) and C(!)
    as the start of a comment, so a longer password or one with those characters is silently a different one.
  - Two proxy hosts with different passwords both take the virtual IP (each drops the other's adverts), so
    every proxy host must be given the same one.
  - The line names the hosts and the variable C(proxy_vrrp_auth_pass) and never the password.
options:
  _input:
    description: Each proxy host's C(proxy_vrrp_auth_pass), by host name (an unset one as empty).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Check the VRRP password
  ansible.builtin.assert:
    that: _problem | length == 0
    fail_msg: "{{ _problem }}"
  vars:
    _problem: "{{ dict(hosts | zip(hosts | map('extract', hostvars, 'proxy_vrrp_auth_pass'))) | openfuyao.pd.vrrp_pass_problem }}"
"""

RETURN = r"""
_value:
  description: One line naming the hosts, the variable and the fix; empty when the password is fine.
  type: str
"""

# Printable ASCII without white space, quotes or keepalived's comment characters.
_PASS = re.compile(r"[!-~]{1,8}")
_BAD = set("#!\"'")


def vrrp_pass_problem(passwords: dict[str, Any]) -> str:
    """'' when every proxy host has the same usable password, else one line (without the password)."""
    values = {h: ("" if v is None else str(v)) for h, v in passwords.items()}
    missing = sorted(h for h, v in values.items() if not v)
    if missing:
        return (
            f"hosts {', '.join(missing)}: pd_proxy_vip needs proxy_vrrp_auth_pass, the VRRP password every proxy "
            "host shares (1-8 printable characters; keep it in a vault)"
        )
    if len(set(values.values())) > 1:
        return (
            f"hosts {', '.join(sorted(values))}: proxy_vrrp_auth_pass differs between the proxy hosts, so each would "
            "take the virtual IP: set one proxy_vrrp_auth_pass for group proxy"
        )
    value = next(iter(values.values()))
    if not _PASS.fullmatch(value) or _BAD & set(value):
        return (
            f"hosts {', '.join(sorted(values))}: proxy_vrrp_auth_pass must be 1-8 printable ASCII characters without "
            "white space, quotes, '#' or '!' (keepalived reads only 8 and the rest as a comment): choose another"
        )
    return ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"vrrp_pass_problem": vrrp_pass_problem}
