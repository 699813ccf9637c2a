#!/usr/bin/env python3
"""Host-side checks the vllm_pd/proxy roles run through ansible.builtin.script.

  pd_host.py ports JSON       which of the listed (address, port) pairs cannot be bound
  pd_host.py wait JSON        wait until each service answers its URLs, or report why not

Prints one JSON line; never a traceback (the role turns the JSON into a one-line error).
Standard library only: it runs with the host's python3, before any venv exists.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any


def port_in_use(address: str, port: int) -> bool:
    """True when something already binds address:port (or the wildcard) on this host."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    bind_to = "0.0.0.0" if address in ("", "0.0.0.0") else address
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_to, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                # Not an address of this host: the bind would fail anyway; report it as such.
                return True
            return exc.errno == errno.EADDRINUSE
    return False


def check_ports(items: list[dict[str, Any]]) -> dict[str, Any]:
    busy = [i for i in items if port_in_use(i["address"], int(i["port"]))]
    return {"busy": busy}


MARK = "--- openfuyao.pd: starting "


def tail(path: str, lines: int) -> list[str]:
    """The last lines of the log since the last start marker (the log is appended across starts)."""
    try:
        with open(path, errors="replace") as fh:
            recent = [line.rstrip("\n") for line in deque(fh, maxlen=5000)]
    except OSError as exc:
        return [f"(no log at {path}: {exc.strerror})"]
    starts = [i for i, line in enumerate(recent) if line.startswith(MARK)]
    if starts:
        recent = recent[starts[-1]:]
    return recent[-lines:]


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def alive(cmd: list[str]) -> bool:
    """The supervisor's view: rc 0 of `supervisorctl status NAME` / `systemctl is-active`."""
    if not cmd:
        return True
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep waiting on the URLs


def wait(spec: dict[str, Any]) -> dict[str, Any]:
    """Poll every service until all are ready, one dies, or the deadline passes."""
    services = spec["services"]
    deadline = time.monotonic() + float(spec.get("timeout", 600))
    start = time.monotonic()
    grace = float(spec.get("grace", 3))
    ready: dict[str, float] = {}
    while True:
        for svc in services:
            name = svc["name"]
            if name in ready:
                continue
            if all(http_ok(u) for u in svc["urls"]):
                ready[name] = round(time.monotonic() - start, 1)
                continue
            if time.monotonic() - start > grace and not alive(svc.get("alive_cmd", [])):
                return {"ok": False, "failed": name, "why": "exited before serving",
                        "ready": ready, "log": svc["log"],
                        "tail": tail(svc["log"], int(spec.get("tail", 30)))}
        if len(ready) == len(services):
            return {"ok": True, "ready": ready}
        if time.monotonic() > deadline:
            late = next(s for s in services if s["name"] not in ready)
            return {"ok": False, "failed": late["name"],
                    "why": f"not serving {' and '.join(late['urls'])} after {spec.get('timeout')}s",
                    "ready": ready, "log": late["log"],
                    "tail": tail(late["log"], int(spec.get("tail", 30)))}
        time.sleep(2)


def main(argv: list[str]) -> int:
    try:
        verb, payload = argv[1], json.loads(argv[2])
        result = check_ports(payload) if verb == "ports" else wait(payload)
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        result = {"ok": False, "why": f"bad arguments: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
