# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The rolling order of a rolling restart or upgrade: batches that keep the minimum serving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_day2 import Day2InputError, run

DOCUMENTATION = r"""
---
name: day2_batches
short_description: The rolling order of a rolling restart or upgrade, in batches that keep capacity
version_added: "0.1.0"
description:
  - Every role of O(roles) in turn (C(decode) before C(prefill) when given so; C(proxy) is not an instance
    role and is skipped), its instances in batches of at most O(max_unavailable), never leaving fewer than
    O(min_available) instances of the role serving.
  - A role that cannot lose even one instance, and names in O(only) the plan does not have, are refused in
    the result's C(error) (one line each, naming the variable and the fix) rather than by failing, so the
    playbook shows them in its own task.
  - Input that is not a plan fails the task with one line naming the filter and the fix.
positional: roles, max_unavailable, min_available, only
options:
  _input:
    description: The plan (C(pd_plan)).
    type: dict
    required: true
  roles:
    description: Roles to roll, in order (C(day2_roll_roles)).
    type: list
    elements: str
    required: true
  max_unavailable:
    description: Most instances of a role restarted at once (C(day2_max_unavailable)).
    type: int
    default: 1
  min_available:
    description: Fewest instances per role that keep serving, by role (C(day2_min_available_prefill/decode)); 1 when a role is missing.
    type: dict
    default: {}
  only:
    description: Instance names to roll (C(day2_only_instances)); all when empty.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Compute the batches
  ansible.builtin.set_fact:
    _day2_roll: "{{ pd_plan | openfuyao.pd.day2_batches(['decode', 'prefill'], 1, {'prefill': 1, 'decode': 1}, []) }}"

- name: Refuse a roll that would drop below capacity
  ansible.builtin.fail:
    msg: "{{ _day2_roll.error }}"
  when: _day2_roll.error is not none
"""

RETURN = r"""
_value:
  description: The batches and why a roll is refused.
  type: dict
  contains:
    batches:
      description: In order; each with C(role) and C(instances) (C(name), C(host), C(role), C(health_url), C(address), C(http_port)).
      type: list
      elements: dict
    error:
      description: Why (part of) the roll is refused, one line per reason; null when nothing is.
      type: str
"""


def day2_batches(
    plan: Mapping[str, Any],
    roles: Sequence[str],
    max_unavailable: int = 1,
    min_available: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    try:
        return run("batches", {"plan": plan, "roles": roles, "max_unavailable": max_unavailable,
                               "min_available": min_available or {}, "only": only or []})
    except Day2InputError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"day2_batches": day2_batches}
