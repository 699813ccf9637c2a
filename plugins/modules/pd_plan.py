# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
# This file only documents the action plugin plugins/action/pd_plan.py, which does the work
# on the controller.

DOCUMENTATION = r"""
---
module: pd_plan
short_description: Compute and validate the prefill/decode layout plan from the inventory
version_added: "0.1.0"
description:
  - Reads the C(prefill), C(decode), C(proxy), C(mooncake_master) and C(storage) groups and the
    C(pd_*) variables of their hosts, and the C(ansible_facts.npu) facts gathered by
    M(openfuyao.pd.npu_topology) when present, and computes the plan - devices, ports, engine ids,
    connector configuration, environment and C(vllm serve) argv of every instance, and the proxy
    backends (see C(docs/plan.md) and C(docs/plan-schema.md)).
  - Runs entirely on the controller; no host is contacted.
  - Every validation problem is reported on its own line naming the host, group or variable and the
    fix; nothing is returned when any problem is found.
  - Sets the fact C(pd_plan). Run it with C(run_once) to give the fact to every host of the play.
options:
  use_facts:
    description:
      - Use C(ansible_facts.npu) of each host (from M(openfuyao.pd.npu_topology)) to count devices
        and to refuse devices that are unhealthy or busy.
    type: bool
    default: true
  fail_on_warnings:
    description:
      - Treat warnings (likely typos of C(pd_*) variables, ports inside randomly used ranges) as errors.
    type: bool
    default: false
  inventory_only:
    description:
      - Only load the variables of every host of the groups (a broken C(host_vars)/C(group_vars)
        file is reported with its path) and check that C(prefill), C(decode) and C(proxy) have
        hosts; compute no plan and set no fact. C(site.yml) runs this first, before any host is
        contacted, because a play over misspelled groups would otherwise match no host and succeed.
    type: bool
    default: false
  output:
    description:
      - Absolute path of a file on the controller to write the plan to, as JSON (mode C(0600),
        replaced atomically, left alone when it already holds this plan). When planning fails
        the file is removed, so a plan from an earlier run never passes for this one. In check
        mode nothing is written or removed.
    type: path
  plan_file:
    description:
      - Path of a reviewed plan on the controller (the JSON that O(output) wrote; C(-e pd_plan_file=FILE)
        in the playbooks), applied instead of the computed plan. A relative path is taken from the
        current directory.
      - The file must be a schema-2 plan (its sections present with their JSON types) whose hosts are
        all in the inventory; otherwise the task fails with one line naming the file, the field and
        the fix.
      - The plan of the current inventory is computed too, and where the file differs from it is
        reported in one warning; the file's plan is the one set as C(pd_plan).
      - Cannot be combined with O(output) or O(inventory_only).
    type: path
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: The plan is computed the same way; nothing is ever changed on a host, and the O(output) file is neither written nor removed.
  diff_mode:
    support: none
  action:
    description: Indicates this has a corresponding action plugin so some parts of the work happen on the controller.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: all
author:
  - openFuyao PD contributors (@openfuyao)
"""

EXAMPLES = r"""
- name: Compute the plan once and give it to every host
  openfuyao.pd.pd_plan:
  run_once: true

- name: Write the plan to a file on the controller
  openfuyao.pd.pd_plan:
    output: /srv/pd/pd_plan.json
  run_once: true

- name: Apply a reviewed plan file, warning where the inventory now plans otherwise
  openfuyao.pd.pd_plan:
    plan_file: /srv/pd/pd_plan.json
  run_once: true

- name: Check only that the inventory loads and has the required groups
  openfuyao.pd.pd_plan:
    inventory_only: true
  run_once: true

- name: Refuse likely typos of pd_* variables
  openfuyao.pd.pd_plan:
    fail_on_warnings: true
  run_once: true
"""

RETURN = r"""
plan:
  description: The plan (schema in C(docs/plan-schema.md)).
  returned: success
  type: dict
  sample:
    schema_version: 2
    connector: shared_storage
    instances: []
table:
  description: Readable lines, one per instance (host, instance, role, devices, ports, engine id).
  returned: success
  type: list
  elements: str
output:
  description: The file the plan was written to (option O(output)).
  returned: success and O(output) given
  type: str
plan_file_differences:
  description:
    - Where the reviewed plan file differs from the plan of the current inventory, one phrase each
      (also the warning); null when the current inventory does not plan.
  returned: success and O(plan_file) given
  type: list
  elements: str
problems:
  description: Every validation error, one line each.
  returned: failed
  type: list
  elements: str
ansible_facts:
  description: Facts set by the action.
  returned: success
  type: dict
  contains:
    pd_plan:
      description: The plan, as in RETURN C(plan).
      type: dict
      returned: success
"""
