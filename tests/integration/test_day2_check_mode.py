"""Check mode on a fresh host: site.yml and the day-2 playbooks on inventories/local-sim say what
they would do, exit 0 and create nothing (no directory, no file, no process).

The deployed case (same playbooks on a running deployment: no file and no pid changes) is in
test_day2_local_sim.py, on that module's deployment.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from day2_snapshot import diff, file_snapshot
from test_day2_support import ROOT, Deployment, free_base, private_dirs

pytestmark = pytest.mark.skipif(shutil.which("supervisord") is None, reason="needs supervisord (make system-deps)")


def processes_under(root: Path) -> list[str]:
    """Command lines of running processes that mention the deployment's directory."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line and "ps -eo" not in line]


def words(text: str) -> str:
    """The output with ansible's line wrapping of long messages undone."""
    return " ".join(text.split())


def test_check_mode_on_a_fresh_host_changes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    deploy = tmp_path / "deploy"  # every directory of the deployment lives here
    work.mkdir()
    used: set[int] = set()
    prefill, decode, proxy = free_base(2, used), free_base(2, used), free_base(1, used)
    extra = {**private_dirs(deploy), "pd_data_dir": str(deploy / "data"), "pd_prefill_http_port_base": prefill,
             "pd_decode_http_port_base": decode, "pd_proxy_port": proxy}
    dep = Deployment(ROOT / "inventories" / "local-sim" / "cluster.ini", work, extra, proxy)
    dep.write_vars()

    proc = dep.play("site.yml", "--check", timeout=600)
    recap = proc.stdout.rsplit("PLAY RECAP", 1)[1]
    assert "failed=0" in recap and "changed=0" not in recap, recap  # it reports what it would do
    for task in ("Render each instance's launch script", "Render the proxy configuration",
                 "Render the private supervisord configuration"):
        assert f"{task}" in proc.stdout
    assert "check mode: the proxy at" in proc.stdout and "does not serve yet" in proc.stdout

    for playbook in ("rolling_restart.yml", "upgrade.yml", "teardown.yml"):
        dep.play(playbook, "--check", timeout=300)
    # scale.yml reports the whole plan as what it would add (nothing runs yet), not a raw
    # "Connection refused"; bench.yml says why a real run would stop.
    proc = dep.play("scale.yml", "--check", timeout=300)
    assert "nothing is deployed, so every planned instance would be added" in words(proc.stdout)
    for name in ("prefill-0", "prefill-1", "decode-0", "decode-1"):
        assert f"+ {name}" in proc.stdout
    assert "Connection refused" not in proc.stdout.split("Show the difference")[1]
    proc = dep.play("bench.yml", "--check", timeout=300)
    out = words(proc.stdout)
    assert "check mode: a real run would stop:" in out and "does not answer /health" in out
    # a real scale.yml run stops with the fix, before anything changes
    proc = dep.play("scale.yml", check=False, timeout=300)
    assert proc.returncode != 0 and "deploy it first with playbooks/site.yml" in words(proc.stdout)

    assert file_snapshot(deploy) == {}, diff({}, file_snapshot(deploy))
    assert not deploy.exists()
    assert processes_under(deploy) == []
