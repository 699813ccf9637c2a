# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Port ranges that bind() cannot even try: outside 1-65535, or ending before they start.

The rule lives in module_utils/pd_preflight.py, where the preflight's inventory line uses it too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.openfuyao.pd.plugins.module_utils import pd_preflight

DOCUMENTATION = r"""
---
name: ports_out_of_range
short_description: The port ranges that lie outside 1-65535 or end before they start
version_added: "0.1.0"
description:
  - A range is C(start) to C(end) (C(end) defaults to C(start)). Ranges whose C(start) is not a number are
    not judged here (the preflight names them in its own line); a non-numeric C(end) is out of range.
options:
  _input:
    description: Port ranges, each with C(start) and optionally C(end).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Name the port ranges outside 1-65535
  ansible.builtin.debug:
    msg: "{{ [{'start': 0}, {'start': 80, 'end': 70}, {'start': 8000}] | openfuyao.pd.ports_out_of_range }}"
    # [{'start': 0}, {'start': 80, 'end': 70}]
"""

RETURN = r"""
_value:
  description: The ranges out of range, unchanged and in their order.
  type: list
  elements: dict
"""


def ports_out_of_range(ports: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return pd_preflight.ports_out_of_range(ports)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"ports_out_of_range": ports_out_of_range}
