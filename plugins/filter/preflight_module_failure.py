# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""One line for a module result that is not the module's own report (a crash, an error)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible_collections.openfuyao.pd.plugins.module_utils import pd_preflight

DOCUMENTATION = r"""
---
name: preflight_module_failure
short_description: One line for a module result that is not the module's own report
version_added: "0.1.0"
description:
  - The first line of the result's C(msg) (C(the module returned no message) without one) and, when the module
    crashed, the last line of its C(module_stderr) in brackets. No traceback, so a problem stays one line.
options:
  _input:
    description: A registered module result.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Stop when the probe did not report
  ansible.builtin.fail:
    msg: "{{ _probe | openfuyao.pd.preflight_module_failure }}"
  when: _probe.ports is not defined
  # 'Module result deserialization failed: No start of json char found (module stderr: MemoryError: out of memory)'
"""

RETURN = r"""
_value:
  description: The line.
  type: str
"""


def preflight_module_failure(result: Mapping[str, Any] | None) -> str:
    return pd_preflight.module_failure(result)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"preflight_module_failure": preflight_module_failure}
