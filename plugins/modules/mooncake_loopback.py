#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mooncake_loopback
short_description: Verify a Mooncake transfer engine install with a real loopback TCP transfer
version_added: "0.1.0"
description:
  - Runs, with the python of O(venv) (where the Mooncake transfer engine is installed), two processes on this
    host that start a transfer engine each (C(P2PHANDSHAKE), protocol C(tcp), no metadata service); one writes
    a seeded pattern of O(size) bytes into the other's registered buffer and the receiver checks every byte.
  - Fails when the engine does not start, the transfer fails or a byte differs, with RV(why) in one line; the
    result still carries RV(ok) and RV(why), so a role can add its own advice with C(failed_when=false).
  - Changes nothing; the module's own interpreter needs no Mooncake.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  venv:
    description:
      - The virtual environment with the Mooncake transfer engine; its C(bin/python) runs the transfer.
    type: path
    required: true
  size:
    description:
      - Bytes to transfer.
    type: int
    default: 8388608
  timeout:
    description:
      - Seconds the whole check may take before it counts as failed.
    type: int
    default: 300
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: The check only reads and changes nothing, so it runs in check mode too and returns the same findings.
  diff_mode:
    support: none
seealso:
  - name: Mooncake transfer engine
    description: The engine this verifies.
    link: https://github.com/kvcache-ai/Mooncake
"""

EXAMPLES = r"""
- name: Write a pattern from one process into another's buffer over loopback TCP
  openfuyao.pd.mooncake_loopback:
    venv: /opt/openfuyao-pd/vllm
    size: 8388608
  register: loopback

- name: Report the transfer
  ansible.builtin.debug:
    msg: "{{ loopback.bytes }} bytes in {{ loopback.seconds }} s ({{ loopback.gbytes_per_s }} GB/s)"
"""

RETURN = r"""
ok:
  description: Whether every byte arrived as sent.
  returned: always
  type: bool
  sample: true
why:
  description: Why the check failed, one line; empty when it passed.
  returned: always
  type: str
  sample: "cannot start the transfer engine (ModuleNotFoundError: No module named 'mooncake')"
bytes:
  description: Bytes transferred.
  returned: success
  type: int
  sample: 8388608
seconds:
  description: How long C(transfer_sync_write) took.
  returned: success
  type: float
  sample: 0.0049
gbytes_per_s:
  description: The transfer's rate in GB/s (10^9 bytes).
  returned: success
  type: float
  sample: 1.712
"""

import inspect
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.openfuyao.pd.plugins.module_utils import mooncake_loopback as loopback

ARGUMENT_SPEC = dict(
    venv=dict(type="path", required=True),
    size=dict(type="int", default=loopback.DEFAULT_BYTES),
    timeout=dict(type="int", default=300),
)


def run_check(python: str, script: str, size: int, timeout: int) -> dict:
    """The check's result: run the script with the venv's python and read its JSON line back."""
    try:
        proc = subprocess.run([python, script, str(size)], capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=os.path.dirname(script), env=dict(os.environ, LC_ALL="C"))
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": f"the check took longer than {timeout} s (timeout); see whether the host's "
                                    "loopback TCP is filtered"}
    except OSError as exc:
        return {"ok": False, "why": f"cannot run {python} ({exc.strerror})"}
    return loopback.parse_output(proc.returncode, proc.stdout, proc.stderr)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    for name in ("size", "timeout"):
        if params[name] < 1:
            module.fail_json(msg=f"{name} must be at least 1, got {params[name]}", ok=False,
                             why=f"bad option {name}={params[name]}")
    python = os.path.join(params["venv"], "bin", "python")
    if not os.access(python, os.X_OK):
        why = f"no python at {python}"
        module.fail_json(msg=f"{why}: install the Mooncake transfer engine into {params['venv']} first",
                         ok=False, why=why)
    script = os.path.join(module.tmpdir, "mooncake_loopback.py")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(inspect.getsource(loopback))
    result = run_check(python, script, params["size"], params["timeout"])
    if not result["ok"]:
        module.fail_json(msg=f"Mooncake loopback transfer failed ({result['why']})", changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
