# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The simulator takes `vllm serve MODEL ...`'s flags; turn an instance's argv into them."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: sim_serve_flags
short_description: The C(pd-engine-sim serve) arguments for an instance's vLLM argv
version_added: "0.1.0"
description:
  - C(vllm serve MODEL FLAGS...) gives C(MODEL FLAGS...).
  - The planner's cpu form C(python3 -m vllm.entrypoints.openai.api_server FLAGS... --model MODEL FLAGS...)
    gives C(MODEL) followed by the other flags in their order.
options:
  _input:
    description: The instance's argv (C(pd_plan.instances[].argv)).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Show the simulator's arguments
  ansible.builtin.debug:
    msg: "{{ ['python3', '-m', 'vllm.entrypoints.openai.api_server', '--port', '8100', '--model', 'm'] | openfuyao.pd.sim_serve_flags }}"
    # ['m', '--port', '8100']
"""

RETURN = r"""
_value:
  description: The model followed by the flags.
  type: list
  elements: str
"""


def sim_serve_flags(argv: Sequence[str]) -> list[str]:
    if posixpath.basename(argv[0]) == "vllm" and argv[1] == "serve":
        return list(argv[2:])
    rest = list(argv[3:])
    i = rest.index("--model")
    return [rest[i + 1], *rest[:i], *rest[i + 2 :]]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"sim_serve_flags": sim_serve_flags}
