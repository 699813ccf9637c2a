# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""supervisord program files of services that are no longer wanted."""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: unwanted_programs
short_description: Paths of supervisord program files whose service is not wanted any more
version_added: "0.1.0"
description:
  - A program file is C(<service name>.conf); the paths of those whose service name is not in O(wanted)
    are returned, in the order found.
positional: wanted
options:
  _input:
    description: The C(files) of an M(ansible.builtin.find) result (each with C(path)).
    type: list
    elements: dict
    required: true
  wanted:
    description: Names of the services to keep.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Remove the program sections of services that are gone
  ansible.builtin.file:
    path: "{{ item }}"
    state: absent
  loop: "{{ __service_program_all.files | openfuyao.pd.unwanted_programs(['openfuyao-pd-proxy']) }}"
"""

RETURN = r"""
_value:
  description: Paths of the program files to remove.
  type: list
  elements: str
"""


def _service_name(path: str) -> str:
    name = posixpath.basename(path)
    return name[: -len(".conf")] if name.endswith(".conf") else name


def unwanted_programs(files: Sequence[Mapping[str, Any]], wanted: Collection[str]) -> list[str]:
    return [f["path"] for f in files if _service_name(f["path"]) not in wanted]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"unwanted_programs": unwanted_programs}
