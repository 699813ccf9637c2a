"""Shared by the day-2 integration tests: a private deployment, playbook runs, load, service pids."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONNECTOR = ROOT / "files" / "connector"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base(count: int, avoid: set[int]) -> int:
    """A port base with `count` consecutive free ports (the planner numbers ports from a base)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        ports = range(base, base + count)
        if base + count < 65000 and not avoid.intersection(ports) and all(port_free(p) for p in ports):
            avoid.update(ports)
            return base
    raise RuntimeError("no free port range")


def private_dirs(base: Path, venv: bool = True) -> dict[str, str]:
    """Role variables that keep a test deployment's files under `base` (nothing in /etc, /var, /opt).

    With `venv`, the stack and the proxy share a venv there too (simulator engines need no vLLM)."""
    dirs = {
        "vllm_pd_conf_dir": str(base / "etc"),
        "vllm_pd_log_dir": str(base / "log"),
        "vllm_pd_state_dir": str(base / "state"),
        "vllm_pd_run_dir": str(base / "run"),
        "proxy_venv": str(base / ("venv" if venv else "proxyvenv")),
    }
    if venv:
        dirs["vllm_pd_venv"] = str(base / "venv")
    return dirs


@dataclass
class Deployment:
    inventory: Path
    workdir: Path
    extra: dict[str, Any]
    proxy_port: int

    @property
    def vars_file(self) -> Path:
        return self.workdir / "vars.yml"

    @property
    def supervisor_conf(self) -> Path:
        return Path(self.extra["vllm_pd_conf_dir"]) / "supervisord.conf"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def write_vars(self) -> None:
        self.vars_file.write_text(yaml.safe_dump(self.extra))

    def play(self, playbook: str, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        cmd = ["ansible-playbook", str(ROOT / "playbooks" / playbook), "-i", str(self.inventory),
               "-e", f"@{self.vars_file}", *args]
        proc = subprocess.run(cmd, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        (self.workdir / f"{playbook}.log").write_text(proc.stdout + proc.stderr)
        if check:
            assert proc.returncode == 0, f"{playbook} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        return proc

    def supervisor(self, *args: str) -> str:
        return subprocess.run(["supervisorctl", "-c", str(self.supervisor_conf), *args], capture_output=True,
                              text=True, check=False, timeout=60).stdout

    def pids(self) -> dict[str, int | None]:
        out = {}
        for line in self.supervisor("status").splitlines():
            parts = line.split()
            if parts and parts[0].startswith("openfuyao-pd-"):
                m = re.search(r"pid (\d+)", line)
                out[parts[0].removeprefix("openfuyao-pd-")] = int(m.group(1)) if m else None
        return out

    def proxy_instances(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.proxy_url + "/v1/instances", timeout=10) as resp:
            return json.loads(resp.read())["instances"]

    def health(self) -> dict[str, Any]:
        """The proxy's /health answer (its worker generation and pid among others)."""
        with urllib.request.urlopen(self.proxy_url + "/health", timeout=10) as resp:
            return json.loads(resp.read())

    def wait_routable(self, names: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = {b["name"] for b in self.proxy_instances()
                  if b["healthy"] and not b["ejected"] and not b["draining"]}
            if names <= ok:
                return
            time.sleep(0.5)
        raise AssertionError(f"proxy does not route to {names} after {timeout}s: {self.proxy_instances()}")

    def shutdown(self) -> None:
        if self.supervisor_conf.exists():
            self.supervisor("shutdown")

    @contextmanager
    def load(self, name: str, rate: float = 8.0, duration: float = 600.0, stream: bool = False, max_tokens: int = 16):
        """Steady client load through the proxy while the body runs; yields a dict filled on exit."""
        stop = self.workdir / f"{name}.stop"
        report = self.workdir / f"{name}.load.json"
        stop.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "openfuyao_pd.loadgen", "--url", self.proxy_url, "--requests", "100000",
               "--rate", str(rate), "--duration", str(duration), "--timeout", "60", "--max-tokens", str(max_tokens),
               "--stop-file", str(stop), "--report", str(report)] + (["--stream"] if stream else [])
        env = dict(os.environ, PYTHONPATH=str(CONNECTOR))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        result: dict[str, Any] = {}
        try:
            time.sleep(1.0)
            yield result
        finally:
            stop.touch()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if report.exists():
                result.update(json.loads(report.read_text()))
            else:
                result["error"] = (proc.stderr.read() if proc.stderr else "")[-2000:]


def local_sim_deployment(work: Path, per_role: int, **extra: Any) -> Deployment:
    """A private inventories/local-sim deployment under work: its own directories and free ports
    with room for per_role instances of each role, the proxy re-probing every second (so a
    re-admitted instance is routable quickly); extra adds or overrides variables. Vars written."""
    used: set[int] = set()
    prefill, decode, proxy = free_base(per_role, used), free_base(per_role, used), free_base(1, used)
    variables = {
        **private_dirs(work),
        "pd_data_dir": str(work / "data"),
        "pd_prefill_http_port_base": prefill,
        "pd_decode_http_port_base": decode,
        "pd_proxy_port": proxy,
        "pd_proxy_health_interval": 1,
        **extra,
    }
    dep = Deployment(ROOT / "inventories" / "local-sim" / "cluster.ini", work, variables, proxy)
    dep.write_vars()
    return dep


def roll_order(output: str) -> list[str]:
    """Instance names in the order the playbook announced their batches (`ROLL role: a, b`)."""
    names: list[str] = []
    for m in re.finditer(r"ROLL (?:decode|prefill|proxy): ([^'\"\n]+)", output):
        names += [n.strip() for n in m.group(1).split(",")]
    return names
