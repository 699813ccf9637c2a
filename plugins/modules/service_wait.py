#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_wait
short_description: Wait until supervised services answer their health URLs
version_added: "0.1.0"
description:
  - Polls every service in O(services) until each one answers all its O(services[].urls) with a 2xx
    status, one of them is gone (its O(services[].alive_cmd) exits non-zero once the first
    O(grace) seconds have passed), or O(timeout) seconds pass.
  - Never fails by itself; it returns RV(ok) and, for the service that did not come up, RV(failed_service),
    RV(why), RV(log) and RV(tail) (the lines of its log since its last start), so the caller can
    write one line naming it.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  services:
    description:
      - The services to wait for.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name of the service, as reported in RV(ready) and RV(failed_service).
        type: str
        required: true
      urls:
        description: URLs that must all answer 2xx for the service to count as ready.
        type: list
        elements: str
        required: true
      log:
        description: Path of the service's log, tailed when it does not come up.
        type: str
        required: true
      alive_cmd:
        description:
          - Command (argv) that exits non-zero once the service is gone, such as
            C(supervisorctl -c CONF status NAME) or C(systemctl is-active --quiet NAME).
          - Empty means the service is never taken for gone; only O(timeout) ends the wait.
        type: list
        elements: str
        default: []
  timeout:
    description: Seconds every service may take to answer all its URLs.
    type: int
    default: 600
  tail:
    description: Lines of the log returned in RV(tail) for a service that did not come up.
    type: int
    default: 30
  grace:
    description: Seconds after the start of the wait during which O(services[].alive_cmd) is not asked.
    type: float
    default: 3
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: It only reads; in check mode it waits the same way.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Wait for the proxy to serve
  openfuyao.pd.service_wait:
    services:
      - name: proxy
        urls: [http://127.0.0.1:8000/health]
        log: /var/log/openfuyao-pd/proxy.log
        alive_cmd: [systemctl, is-active, --quiet, openfuyao-pd-proxy]
    timeout: 120
  register: gate

- name: Report a service that did not come up
  ansible.builtin.fail:
    msg: "{{ gate.failed_service }} {{ gate.why }}"
  when: not gate.ok
"""

RETURN = r"""
ok:
  description: Whether every service answered all its URLs in time.
  returned: always
  type: bool
  sample: true
ready:
  description: Seconds each service that answered took, by service name.
  returned: always
  type: dict
  sample: {proxy: 4.2}
failed_service:
  description: Name of the service that exited or did not answer in time.
  returned: when not ok
  type: str
  sample: openfuyao-pd-prefill-0
why:
  description: Why that service did not come up.
  returned: when not ok
  type: str
  sample: exited before serving
log:
  description: Path of that service's log.
  returned: when not ok
  type: str
  sample: /var/log/openfuyao-pd/prefill-0.log
tail:
  description: The last lines of that log since the service's last start.
  returned: when not ok
  type: list
  elements: str
  sample: ["--- openfuyao.pd: starting prefill-0", "RuntimeError: no device"]
"""

import subprocess
import time
import urllib.error
from collections import deque

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.openfuyao.pd.plugins.module_utils.service_wait import last_start, wait_services


def _http_ok(url: str) -> bool:
    try:
        with open_url(url, timeout=5.0) as resp:
            return 200 <= resp.getcode() < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _alive(cmd: list[str]) -> bool:
    """The supervisor's view: rc 0 of `supervisorctl status NAME` / `systemctl is-active`."""
    if not cmd:
        return True
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep waiting on the URLs


def _read_tail(path: str, count: int) -> list[str]:
    try:
        with open(path, errors="replace") as fh:
            return last_start(deque(fh, maxlen=5000), count)
    except OSError as exc:
        return [f"(no log at {path}: {exc.strerror})"]


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                urls=dict(type="list", elements="str", required=True),
                log=dict(type="str", required=True),
                alive_cmd=dict(type="list", elements="str", default=[]),
            )),
            timeout=dict(type="int", default=600),
            tail=dict(type="int", default=30),
            grace=dict(type="float", default=3),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = wait_services(p["services"], p["timeout"], p["tail"], p["grace"], http_ok=_http_ok, alive=_alive,
                           read_tail=_read_tail, clock=time.monotonic, sleep=time.sleep)
    if "failed" in result:
        # `failed` is Ansible's own result key: the service's name travels as failed_service.
        result["failed_service"] = result.pop("failed")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
