"""roles/proxy keepalived step: a VRRP password that is missing, longer than keepalived reads or
different between the proxy hosts stops the step at its first task with one line that names the
hosts and never the password (real ansible-playbook, two local proxy hosts)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLAYBOOK = """
- name: The proxy role's keepalived step on two proxy hosts
  hosts: proxy
  connection: local
  gather_facts: false
  vars:
    pd_plan:
      proxies: [{host: px1}, {host: px2}]
      proxy_vip: {address: 10.0.0.100}
      hosts: {px1: {dirs: {conf: /nonexistent, log: /nonexistent, state: /nonexistent, run: /nonexistent}},
              px2: {dirs: {conf: /nonexistent, log: /nonexistent, state: /nonexistent, run: /nonexistent}}}
  tasks:
    - name: Run the role's keepalived step
      ansible.builtin.include_role:
        name: openfuyao.pd.proxy
        tasks_from: keepalived.yml
"""


def _play(tmp_path: Path, px1: str | None, px2: str | None, *extra: str) -> subprocess.CompletedProcess:
    inv = tmp_path / "hosts.ini"
    lines = ["[proxy]"]
    for host, secret in (("px1", px1), ("px2", px2)):
        lines.append(host + ("" if secret is None else f" proxy_vrrp_auth_pass='{secret}'"))
    inv.write_text("\n".join(lines) + "\n")
    play = tmp_path / "play.yml"
    play.write_text(PLAYBOOK)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inv), str(play), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)


def _run(tmp_path: Path, px1: str | None, px2: str | None) -> dict[str, str]:
    run = _play(tmp_path, px1, px2)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    tasks = json.loads(run.stdout)["plays"][0]["tasks"]
    failed = {h: r["msg"] for t in tasks for h, r in t["hosts"].items() if r.get("failed")}
    # Nothing ran after the check on a failing host.
    names = [t["task"]["name"] for t in tasks]
    assert names[-1] == "openfuyao.pd.proxy : Check the VRRP password", names
    for secret in (px1, px2):
        if secret:
            assert secret not in run.stdout + run.stderr
    return failed


@pytest.mark.parametrize(
    ("px1", "px2", "want"),
    [
        ("alpha123", "beta1234",
         {"px1": "px1: hosts px1, px2: proxy_vrrp_auth_pass differs between the proxy hosts, so each would take the "
                 "virtual IP: set one proxy_vrrp_auth_pass for group proxy",
          "px2": "px2: hosts px1, px2: proxy_vrrp_auth_pass differs between the proxy hosts, so each would take the "
                 "virtual IP: set one proxy_vrrp_auth_pass for group proxy"}),
        ("toolong-pass", "toolong-pass",
         {h: f"{h}: hosts px1, px2: proxy_vrrp_auth_pass must be 1-8 printable ASCII characters without white "
             "space, quotes, '#' or '!' (keepalived reads only 8 and the rest as a comment): choose another"
          for h in ("px1", "px2")}),
        # Both stop, not only the host without one: nothing is half-applied.
        ("alpha123", None,
         {h: f"{h}: hosts px2: pd_proxy_vip needs proxy_vrrp_auth_pass, the VRRP password every proxy host shares "
             "(1-8 printable characters; keep it in a vault)" for h in ("px1", "px2")}),
    ],
)
def test_a_bad_vrrp_password_is_one_line_naming_the_hosts(tmp_path: Path, px1, px2, want) -> None:
    assert _run(tmp_path, px1, px2) == want


def test_one_good_password_passes_the_check(tmp_path: Path) -> None:
    # --check, without installing keepalived: only whether both hosts get past the check matters here.
    run = _play(tmp_path, "alpha123", "alpha123", "--check", "-e", "proxy_keepalived_install=false")
    tasks = json.loads(run.stdout)["plays"][0]["tasks"]
    check = next(t for t in tasks if t["task"]["name"] == "openfuyao.pd.proxy : Check the VRRP password")
    assert {h: r.get("failed", False) for h, r in check["hosts"].items()} == {"px1": False, "px2": False}
    assert len(tasks) > 2 and "alpha123" not in run.stdout + run.stderr
