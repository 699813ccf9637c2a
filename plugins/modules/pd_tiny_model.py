#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pd_tiny_model
short_description: Build the embedded tiny model with the stack's python
version_added: "0.1.0"
description:
  - Runs the model builder (C(files/connector/openfuyao_pd/tinymodel.py), copied to the host) with
    O(python), the stack venv's interpreter, since the builder needs its torch, safetensors and
    tokenizers.
  - The builder is deterministic and keeps a stamp in O(dest); it writes nothing when the model of
    O(seed) is already there, and the task is changed exactly when the builder wrote the model.
  - A builder that fails (a missing package, a directory it cannot write) fails the task with the
    builder's own one-line message.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  python:
    description: The python that runs the builder (the stack venv's C(bin/python)).
    type: path
    required: true
  builder:
    description: Path of the builder script on the host.
    type: path
    required: true
  dest:
    description: The model directory to build (the plan's C(model.path)).
    type: path
    required: true
  seed:
    description: Seed of the random weights and tokenizer.
    type: int
    required: true
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: none
    details: The builder cannot tell what it would write without building.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Build the embedded model with the venv's torch
  openfuyao.pd.pd_tiny_model:
    python: /opt/openfuyao-pd/vllm/bin/python
    builder: /var/lib/openfuyao-pd/tinymodel.py
    dest: /var/lib/openfuyao-pd/models/tiny-llama
    seed: 1234
  register: model_build
"""

RETURN = r"""
path:
  description: The model directory.
  returned: success
  type: str
  sample: /var/lib/openfuyao-pd/models/tiny-llama
seed:
  description: The seed it was built with.
  returned: success
  type: int
  sample: 1234
"""

import json

from ansible.module_utils.basic import AnsibleModule


def builder_result(rc: int, stdout: str, stderr: str) -> tuple[dict | None, str | None]:
    """(the builder's result line as a dict, None), or (None, the problem in one line)."""
    if rc != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"the model builder exited with status {rc} and said nothing"
    for line in reversed(stdout.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("changed"), bool):
            return doc, None
    return None, f"the model builder printed no result line: {stdout.strip()[-200:]!r}"


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            python=dict(type="path", required=True),
            builder=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            seed=dict(type="int", required=True),
        ),
        supports_check_mode=False,
    )
    p = module.params
    rc, stdout, stderr = module.run_command([p["python"], p["builder"], p["dest"], "--seed", str(p["seed"])])
    doc, problem = builder_result(rc, stdout, stderr)
    if problem:
        module.fail_json(msg=f"building the model in {p['dest']}: {problem}", rc=rc)
    module.exit_json(changed=doc["changed"], path=doc.get("path", p["dest"]), seed=doc.get("seed", p["seed"]))


if __name__ == "__main__":
    main()
