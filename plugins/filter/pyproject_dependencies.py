# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The requirements a pyproject.toml declares (its [project] dependencies), read with tomllib."""

from __future__ import annotations

import tomllib
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
---
name: pyproject_dependencies
short_description: The requirements of a C(pyproject.toml), from its text
version_added: "0.1.0"
description:
  - Parses the text of a C(pyproject.toml) (for example from the C(ansible.builtin.file) lookup) and returns
    its C([project] dependencies), each a requirement string as written (markers included).
  - With O(extras), the requirements of those C([project.optional-dependencies]) groups follow, in the order given.
  - Text that is not TOML, or a file without a C([project] dependencies) list of strings, fails with one line
    saying which and what to pass.
positional: extras
options:
  _input:
    description: The text of a C(pyproject.toml).
    type: str
    required: true
  extras:
    description: Names of C([project.optional-dependencies]) groups whose requirements are added.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Download the host-side package's requirements
  ansible.builtin.command:
    argv: "{{ ['pip', 'download', '--dest', '/tmp/wheels'] + lookup('ansible.builtin.file', 'pyproject.toml') | openfuyao.pd.pyproject_dependencies }}"
  changed_when: true
"""

RETURN = r"""
_value:
  description: Requirement strings, C([project] dependencies) first, then those of O(extras).
  type: list
  elements: str
"""


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnsibleFilterError(f"pyproject_dependencies: {where} is not a list of requirement strings; "
                                 "pass the text of a pyproject.toml whose [project] declares its dependencies")
    return list(value)


def pyproject_dependencies(text: str, extras: list[str] | None = None) -> list[str]:
    if not isinstance(text, str):
        raise AnsibleFilterError(f"pyproject_dependencies: expects the text of a pyproject.toml, got "
                                 f"{type(text).__name__}; read it with lookup('ansible.builtin.file', PATH)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AnsibleFilterError(f"pyproject_dependencies: the text is not TOML ({exc}); pass the text of a "
                                 "pyproject.toml, e.g. lookup('ansible.builtin.file', PATH)") from None
    project = doc.get("project")
    if not isinstance(project, dict) or "dependencies" not in project:
        raise AnsibleFilterError("pyproject_dependencies: the pyproject.toml has no [project] dependencies; "
                                 "declare them there (an empty list when there are none)")
    requirements = _strings(project["dependencies"], "[project] dependencies")
    optional = project.get("optional-dependencies") or {}
    for name in extras or []:
        if name not in optional:
            raise AnsibleFilterError(f"pyproject_dependencies: no [project.optional-dependencies] group {name!r} "
                                     f"(it has {', '.join(sorted(optional)) or 'none'}); drop it from extras")
        requirements += _strings(optional[name], f"[project.optional-dependencies] {name}")
    return requirements


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pyproject_dependencies": pyproject_dependencies}
