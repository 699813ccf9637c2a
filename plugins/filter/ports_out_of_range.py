# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Port ranges that bind() cannot even try: outside 1-65535, or ending before they start."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

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


def _out_of_range(port: Mapping[str, Any]) -> bool:
    start, end = port["start"], port.get("end", port["start"])
    return not isinstance(end, Number) or start < 1 or end > 65535 or end < start


def ports_out_of_range(ports: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in ports if isinstance(p.get("start"), Number) and _out_of_range(p)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"ports_out_of_range": ports_out_of_range}
