# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""What scaling changes: the new plan against the proxy's live backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_day2 import Day2InputError, run

DOCUMENTATION = r"""
---
name: day2_diff
short_description: What scaling changes, the plan against the proxy's live backends
version_added: "0.1.0"
description:
  - Matches the plan's instances with the proxy's live backends by role and endpoint (address and port).
    A planned instance with no backend is added, a backend with no planned instance is removed (drained,
    then stopped), the others are kept.
  - A kept instance restarts when the deploy role, in check mode, would change its files and its host
    gains an instance (scale.yml redeploys only those hosts); O(would_change) says which files.
  - A plan that renames running instances or has no instance of a role is refused in the result's
    C(error), one line each with the fix. Input that is not a plan fails the task with one line.
positional: live, would_change
options:
  _input:
    description: The new plan (C(pd_plan)).
    type: dict
    required: true
  live:
    description: The proxy's backends (C(GET /v1/instances) C(instances)), each with C(name), C(role) and C(url).
    type: list
    elements: dict
    required: true
  would_change:
    description:
      - The files of each instance the deploy role would change, as C(NAME:FILE) entries (what scale.yml
        collects) or as a mapping of instance name to files.
    type: raw
    default: []
"""

EXAMPLES = r"""
- name: Compute the difference
  ansible.builtin.set_fact:
    _day2_diff: "{{ pd_plan | openfuyao.pd.day2_diff(_day2_live.json.instances, ['decode-0:env']) }}"

- name: Show the difference (+ added, - removed, ~ restarted, = untouched)
  ansible.builtin.debug:
    msg: "{{ _day2_diff.lines | join('\n') }}"
"""

RETURN = r"""
_value:
  description: The difference.
  type: dict
  contains:
    added:
      description: The plan's instances that start.
      type: list
      elements: dict
    removed:
      description: The live backends that are drained and stopped.
      type: list
      elements: dict
    kept:
      description: Names of the planned instances already routed to.
      type: list
      elements: str
    restarts:
      description: Names of the kept instances that restart, sorted.
      type: list
      elements: str
    lines:
      description: One line per instance, C(+) added, C(-) removed, C(~) restarted, C(=) untouched; C((no change)) alone when nothing changes.
      type: list
      elements: str
    changed:
      description: Whether anything is added, removed or restarted.
      type: bool
    error:
      description: Why the change cannot be made live, one line per reason; null when it can.
      type: str
"""


def day2_diff(
    plan: Mapping[str, Any],
    live: Sequence[Mapping[str, Any]],
    would_change: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
) -> dict[str, Any]:
    try:
        return run("diff", {"plan": plan, "live": live, "would_change": would_change or {}})
    except Day2InputError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"day2_diff": day2_diff}
