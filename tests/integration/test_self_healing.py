"""Self-healing on inventories/local-sim (2P2D simulated engines + proxy under the private supervisord).

One private deployment for the module (site.yml, temporary directories, free ports, short restart
delays), then: a `kill -9` of a decode engine and of the proxy is healed by the restart policy and
the proxy routes to the restarted decode; an instance that cannot start ends FATAL after its
retries and status.yml names it; a simulated reboot (supervisord and every service killed, the run
directory emptied, the boot hook run as init would) brings everything back, and site.yml afterwards
changes nothing (decode-1, left FATAL by the crash loop, comes back too).
Run it under the heavy lock: flock /tmp/pd-heavy.lock .venv/bin/pytest tests/integration/test_self_healing.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_day2_support import Deployment, local_sim_deployment

pytestmark = pytest.mark.skipif(shutil.which("supervisord") is None, reason="needs supervisord (make system-deps)")

INSTANCES = {"prefill-0", "prefill-1", "decode-0", "decode-1"}
RECOVERY_S = 90  # the acceptance bound of issue 12


def get(url: str, timeout: float = 3.0) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return None, ""


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (0 when absent)."""
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def recap_changed(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output.split("PLAY RECAP")[-1]))


def wait_for(what: str, check, timeout: float) -> float:
    """Seconds until `check()` is true; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{what} not true after {timeout}s")


@pytest.fixture(scope="module")
def heal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("heal-sim")
    dep = local_sim_deployment(
        work, 2,
        # Short, so the crash loop ends within seconds: 3 starts per 2 minutes, 2 quick retries.
        vllm_pd_restart_delay=2,
        vllm_pd_restart_burst=3,
        vllm_pd_restart_window=120,
        vllm_pd_start_seconds=2,
        vllm_pd_start_retries=2,
        # The boot hook goes to a private init directory (this machine's /etc/init.d stays untouched).
        vllm_pd_boot_hook_dir=str(work / "init.d"),
        # The KV watchdog decides within seconds.
        vllm_pd_watchdog_threshold=0.5,
        vllm_pd_watchdog_window=2,
        vllm_pd_watchdog_interval=1,
    )
    decode = dep.extra["pd_decode_http_port_base"]
    dep.decode_ports = {"decode-0": decode, "decode-1": decode + 1}  # type: ignore[attr-defined]
    try:
        site(dep)
        dep.wait_routable(INSTANCES)
        yield dep
    finally:
        dep.shutdown()


def site(dep: Deployment) -> subprocess.CompletedProcess[str]:
    proc = dep.play("site.yml", check=False, timeout=1200)
    if proc.returncode != 0:
        # site.yml ends with the KV hand-over check, which simulated centralized engines fail.
        assert "openfuyao.pd.proxy : Fail when the decode side recomputed the prompt" in proc.stdout, (
            proc.stdout[-4000:])
    return proc


def state(dep: Deployment, name: str) -> str:
    line = next((x for x in dep.supervisor("status").splitlines() if x.startswith(f"openfuyao-pd-{name} ")), "")
    return line.split()[1] if line else "ABSENT"


def test_kill_9_of_a_decode_and_of_the_proxy_heals_and_the_proxy_routes_to_the_restarted_decode(
        heal: Deployment) -> None:
    before = heal.pids()
    decode_url = f"http://127.0.0.1:{heal.decode_ports['decode-0']}"  # type: ignore[attr-defined]
    os.kill(before["decode-0"], signal.SIGKILL)
    os.kill(before["proxy"], signal.SIGKILL)

    def serving() -> bool:
        pids = heal.pids()
        return (pids.get("decode-0") not in (None, before["decode-0"]) and pids.get("proxy") not in (None, before["proxy"])
                and get(decode_url + "/health")[0] == 200 and get(heal.proxy_url + "/health")[0] == 200)

    took = wait_for("decode-0 and the proxy serving again", serving, RECOVERY_S)
    print(f"decode-0 and proxy serve again {took:.1f} s after kill -9")
    heal.wait_routable({"decode-0"}, timeout=RECOVERY_S)

    # The restarted decode process starts its counters at 0: any success is one the proxy routed to it.
    def decode0_served() -> bool:
        body = json.dumps({"model": "tiny-llama", "prompt": "heal " * 40, "max_tokens": 4}).encode()
        req = urllib.request.Request(heal.proxy_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        return metric(get(decode_url + "/metrics")[1], "vllm:request_success_total") > 0

    wait_for("the proxy routing a request to the restarted decode-0", decode0_served, 60)
    log = (Path(heal.extra["vllm_pd_log_dir"]) / "supervisord.log").read_text()
    assert "exited: openfuyao-pd-decode-0 (terminated by SIGKILL; not expected)" in log


def test_a_crash_looping_instance_ends_fatal_and_stays_so(heal: Deployment) -> None:
    port = heal.decode_ports["decode-1"]  # type: ignore[attr-defined]
    pid = heal.pids()["decode-1"]
    # The fault: another process takes decode-1's port, so every start of decode-1 fails to bind.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    os.kill(pid, signal.SIGKILL)
    wait_for("decode-1's port free", lambda: get(f"http://127.0.0.1:{port}/health")[0] is None, 30)
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    try:
        took = wait_for("decode-1 FATAL", lambda: state(heal, "decode-1") == "FATAL", 120)
        print(f"decode-1 FATAL {took:.1f} s after its first failed restart")
        time.sleep(3)
        assert state(heal, "decode-1") == "FATAL"  # and it stays so: no spinning
        log = (Path(heal.extra["vllm_pd_log_dir"]) / "decode-1.log").read_text()
        assert "crash loop, not starting it again" in log
    finally:
        blocker.close()
    # decode-1 stays FATAL with its cause gone; the next test's reboot (a fresh start count) brings it back.


def test_the_watchdog_flags_a_stuck_kv_instance_and_status_names_it(heal: Deployment) -> None:
    assert state(heal, "watchdog") == "RUNNING"
    url = f"http://127.0.0.1:{heal.decode_ports['decode-0']}"  # type: ignore[attr-defined]
    body = json.dumps({"faults": ["stuck-kv:0.9"]}).encode()
    req = urllib.request.Request(url + "/sim/faults", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    state_file = Path(heal.extra["vllm_pd_run_dir"]) / "watchdog.json"

    def flagged() -> bool:
        doc = json.loads(state_file.read_text()) if state_file.exists() else {}
        return bool(doc.get("instances", {}).get("decode-0", {}).get("stuck"))

    wait_for("the watchdog flagging decode-0", flagged, 60)
    doc = json.loads(state_file.read_text())
    assert not any(v["stuck"] for k, v in doc["instances"].items() if k != "decode-0")
    prom = (Path(heal.extra["vllm_pd_state_dir"]) / "watchdog.prom").read_text()
    assert 'pd_watchdog_kv_stuck{instance="decode-0"} 1' in prom


def test_status_shows_restarts_the_last_exit_the_fatal_instance_and_the_stuck_one(heal: Deployment) -> None:
    # One status run for the three tests above (each run costs seconds on a busy machine).
    proc = heal.play("status.yml", "-e", "day2_status_fail_on_problems=true", check=False)
    out = proc.stdout
    assert proc.returncode != 0 and "Traceback" not in out + proc.stderr
    row = next(line for line in out.splitlines() if " decode-0 " in line and "RUNNING" in line)
    assert re.search(r"RUNNING\s+1\s+SIGKILL@", row), row
    assert "kv-stuck" in row
    assert re.search(r"service=RUNNING uptime=\S+ restarts=1 last_exit=SIGKILL@", out), out[-3000:]
    assert "decode-1 on localhost: service is FATAL" in out
    assert "crash loop, the supervisor gave up after" in out
    assert "decode-0 on localhost: KV cache stuck at 0.9 with no request (KV watchdog)" in out
    assert "prefill-0 on localhost: KV cache stuck" not in out


def test_a_simulated_reboot_brings_everything_back_and_site_then_changes_nothing(heal: Deployment) -> None:
    hook = Path(heal.extra["vllm_pd_boot_hook_dir"]) / "openfuyao-pd"
    assert hook.exists(), "site.yml installs the boot hook where systemd does not run"
    supervisord = int(heal.supervisor("pid").strip())
    before = heal.pids()
    # Power off: supervisord and every service die at once, and /run starts empty.
    for pid in [supervisord, *(p for p in before.values() if p)]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    wait_for("every service gone", lambda: get(heal.proxy_url + "/health")[0] is None
             and all(get(f"http://127.0.0.1:{p}/health")[0] is None
                     for p in heal.decode_ports.values()), 30)  # type: ignore[attr-defined]
    shutil.rmtree(heal.extra["vllm_pd_run_dir"])
    # Boot: what the host's init runs (update-rc.d links it into rc2.d..rc5.d on a real /etc/init.d).
    subprocess.run([str(hook), "start"], check=True, timeout=60)

    assert before["decode-1"] is None  # still FATAL from the crash loop

    def all_running() -> bool:
        pids = heal.pids()
        return all(pids.get(n) and pids[n] != before[n] for n in before)

    took = wait_for("every service running again after the boot hook", all_running, RECOVERY_S)
    heal.wait_routable(INSTANCES, timeout=RECOVERY_S)
    print(f"all services serving {took:.1f} s after the boot hook ran")
    booted = heal.pids()
    proc = site(heal)
    assert recap_changed(proc.stdout) == 0, proc.stdout[-3000:]
    assert heal.pids() == booted  # nothing restarted
