# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The descriptions of the attributes every module of the collection declares; each module
states its own support and details (a module's keys win over the fragment's when merged)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
"""
