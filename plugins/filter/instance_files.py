# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The extra files (e.g. a UCM config) the plan asks for, with where each one lands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: instance_files
short_description: The plan's extra files of instances, one entry per file with its destination
version_added: "0.1.0"
description:
  - The plan keys an instance's C(files) by path. An absolute key is the destination itself (e.g. the
    file that C(UCM_CONFIG_FILE) names); a relative key lands in the instance's directory
    C(<conf_dir>/instances/<name>/).
positional: conf_dir
options:
  _input:
    description: Instances of the plan, each with C(name) and optionally C(files) (path to content).
    type: list
    elements: dict
    required: true
  conf_dir:
    description: The configuration directory that holds C(instances/<name>/) (the plan's C(hosts[HOST].dirs.conf)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Render each instance's extra files
  ansible.builtin.copy:
    content: "{{ item.content }}"
    dest: "{{ item.dest }}"
    mode: "0640"
  loop: "{{ _vllm_pd_instances | openfuyao.pd.instance_files(_vllm_pd_dirs.conf) }}"
"""

RETURN = r"""
_value:
  description: One dict per file with C(instance), C(file) (the plan's key), C(dest) and C(content).
  type: list
  elements: dict
"""


def instance_files(instances: Sequence[Mapping[str, Any]], conf_dir: str) -> list[dict[str, Any]]:
    return [
        {
            "instance": i["name"],
            "file": path,
            "dest": path if path.startswith("/") else f"{conf_dir}/instances/{i['name']}/{path}",
            "content": content,
        }
        for i in instances
        for path, content in (i.get("files") or {}).items()
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"instance_files": instance_files}
