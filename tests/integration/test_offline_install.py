"""The air-gapped install path: playbooks/wheelhouse.yml builds the wheelhouse for
inventories/local-sim on this (connected) machine, then site.yml deploys with
pd_offline_wheelhouse inside a network namespace that has only a loopback interface and no
route at all. Everything pip installs (the host-side package, its aiohttp/PyYAML, supervisor
itself) must come from the pushed wheelhouse; a step that reaches for the network fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "local-sim" / "cluster.ini"

pytestmark = pytest.mark.slow


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    name = f"pdprobe-{uuid.uuid4().hex[:8]}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


def _env(extra_path: Path | None = None) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    if extra_path is not None:
        path = f"{extra_path}:{path}"
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", PATH=path)


@pytest.fixture
def netns():
    why = _netns_usable()
    if why:
        pytest.skip(why)
    name = f"pdoffline-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_site_installs_from_the_wheelhouse_with_no_network(tmp_path, netns):
    wheels = tmp_path / "wheelhouse"
    built = subprocess.run(
        ["ansible-playbook", "playbooks/wheelhouse.yml", "-i", str(INVENTORY), "-e", f"wheelhouse_dir={wheels}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-2000:]
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert {"aiohttp", "pyyaml", "supervisor", "setuptools"} <= names, names

    # The namespace really is cut off: no route, and a connection to the outside fails at once.
    routes = subprocess.run(["ip", "netns", "exec", netns, "ip", "route"], capture_output=True, text=True, check=True)
    assert routes.stdout.strip() == ""
    probe = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c",
         "import socket; s = socket.socket(); s.settimeout(3); s.connect(('1.1.1.1', 443))"],
        capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe.stderr

    base = tmp_path / "deploy"
    link = base / "bin"
    extra = {
        "vllm_pd_conf_dir": str(base / "etc"),
        "vllm_pd_log_dir": str(base / "log"),
        "vllm_pd_state_dir": str(base / "state"),
        "vllm_pd_run_dir": str(base / "run"),
        "vllm_pd_venv": str(base / "venv"),
        "proxy_venv": str(base / "venv"),
        "pd_offline_wheelhouse": str(wheels),
        "pd_instances_per_host": 1,
        # supervisor from the wheelhouse even though this machine has Debian's: that is the
        # path of an air-gapped host; linked into a private PATH directory.
        "vllm_pd_supervisor_source": "wheelhouse",
        "vllm_pd_supervisor_link_dir": str(link),
    }
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text(yaml.safe_dump(extra))
    cmd = ["ip", "netns", "exec", netns,
           "ansible-playbook", str(ROOT / "playbooks" / "site.yml"), "-i", str(INVENTORY), "-e", f"@{vars_file}"]
    try:
        site = subprocess.run(cmd, cwd=tmp_path, env=_env(link), capture_output=True, text=True, timeout=900,
                              check=False)
        (tmp_path / "site.log").write_text(site.stdout + site.stderr)
        assert site.returncode == 0, site.stdout[-5000:] + site.stderr[-2000:]
        recap = site.stdout[site.stdout.rindex("PLAY RECAP"):]
        assert "failed=0" in recap and "unreachable=0" in recap, recap
        # The wheelhouse push is the shared install step of roles/_common.
        assert "TASK [openfuyao.pd._common : Unpack the wheelhouse on the host]" in site.stdout
        assert (base / "state" / "wheelhouse" / ".openfuyao-wheelhouse.sha256").is_file()
        supervisorctl = link / "supervisorctl"
        assert supervisorctl.resolve().is_relative_to(base / "state" / "supervisor"), supervisorctl.resolve()
        status = subprocess.run([str(supervisorctl), "-c", str(base / "etc" / "supervisord.conf"), "status"],
                                capture_output=True, text=True, timeout=60, check=False).stdout
        running = [ln.split()[0] for ln in status.splitlines() if " RUNNING " in f" {ln} "]
        assert {"openfuyao-pd-prefill-0", "openfuyao-pd-decode-0", "openfuyao-pd-proxy"} <= set(running), status
    finally:
        conf = base / "etc" / "supervisord.conf"
        if conf.exists() and (link / "supervisorctl").exists():
            subprocess.run([str(link / "supervisorctl"), "-c", str(conf), "shutdown"], capture_output=True,
                           timeout=60, check=False)


def test_loopback_inside_the_namespace_works(netns):
    """The namespace is not broken as a whole: its loopback carries TCP (site.yml needs that)."""
    code = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            "c = socket.create_connection(s.getsockname(), timeout=3); print('ok')")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.strip() == "ok"
