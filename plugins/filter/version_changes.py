# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""What an upgrade changed: one line per package whose version differs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOCUMENTATION = r"""
---
name: version_changes
short_description: One line per package whose version differs between two version maps
version_added: "0.1.0"
description:
  - Compares the package-to-version maps before and after an upgrade; a package missing on one side
    shows as C(-). Lines are sorted by package name.
positional: after
options:
  _input:
    description: Versions before, package name to version.
    type: dict
    required: true
  after:
    description: Versions after, package name to version.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Show what changed on this host
  ansible.builtin.debug:
    msg: "{{ {'vllm': '0.1', 'torch': '2.0'} | openfuyao.pd.version_changes({'vllm': '0.2', 'torch': '2.0'}) }}"
    # ['vllm 0.1 -> 0.2']
"""

RETURN = r"""
_value:
  description: Lines C(<package> <before> -> <after>).
  type: list
  elements: str
"""


def version_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, "-"), after.get(name, "-")
        if old != new:
            lines.append(f"{name} {old} -> {new}")
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"version_changes": version_changes}
