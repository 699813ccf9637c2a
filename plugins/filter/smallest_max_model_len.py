# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The context length every instance accepts: the smallest --max-model-len of their argv."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: smallest_max_model_len
short_description: The smallest C(--max-model-len) among the plan's instances
version_added: "0.1.0"
description:
  - Reads the value after C(--max-model-len) in each instance's C(argv); 0 when no instance sets it.
options:
  _input:
    description: Instances of the plan, each with C(argv).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Fit the benchmark's prompts to the model
  ansible.builtin.debug:
    msg: "{{ pd_plan.instances | openfuyao.pd.smallest_max_model_len }}"
"""

RETURN = r"""
_value:
  description: The smallest C(--max-model-len), or 0.
  type: int
"""

_FLAG = "--max-model-len"


def smallest_max_model_len(instances: Sequence[Mapping[str, Any]]) -> int:
    lens = [int(i["argv"][i["argv"].index(_FLAG) + 1]) for i in instances if _FLAG in i["argv"]]
    return min(lens) if lens else 0


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"smallest_max_model_len": smallest_max_model_len}
