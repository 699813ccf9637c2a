#!/usr/bin/env python3
# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Read-only host probe of the preflight role (stdlib only, runs on the managed host).

Argument: base64 of a JSON request
    {"mount": {"path": "/mnt", "fstype": ""} | null,
     "disk": {"path": "/var/lib", "min_free_gb": 20} | null,
     "ports": [{"start": 8100, "end": 8100, "purpose": "http"}],
     "engine": "docker" | null}
Prints one JSON document with the findings; never changes anything. Ports are tested by
binding them (what the service will do), which also catches listeners hidden from ss in
other network namespaces sharing the host network.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys


def unescape_mount(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def find_mount(path: str, mounts_text: str) -> dict:
    target = os.path.normpath(path)
    found = None
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and os.path.normpath(unescape_mount(parts[1])) == target:
            found = {"source": unescape_mount(parts[0]), "fstype": parts[2]}  # last one wins (stacked mounts)
    return {"path": path, "exists": os.path.isdir(path), "mounted": found is not None,
            "source": found["source"] if found else None, "fstype": found["fstype"] if found else None}


def disk_free(path: str) -> dict:
    probe = path
    while probe and not os.path.exists(probe):  # an image dir not created yet: judge its filesystem
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    usage = shutil.disk_usage(probe or "/")
    return {"path": path, "checked_path": probe, "free_gb": round(usage.free / 1e9, 1),
            "total_gb": round(usage.total / 1e9, 1)}


def port_busy(port: int) -> str | None:
    """None when the port can be bound on all addresses, else the reason."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno == 99 and family == socket.AF_INET6:  # EADDRNOTAVAIL: IPv6 disabled
                continue
            return "in use" if exc.errno == 98 else exc.strerror
        finally:
            sock.close()
    return None


def check_ports(ranges: list) -> list:
    results = []
    for item in ranges:
        start = int(item["start"])
        end = int(item.get("end", start))
        busy = {}
        for port in range(max(start, 1), min(end, 65535) + 1):  # the role reports the rest; bind() would raise
            reason = port_busy(port)
            if reason:
                busy[str(port)] = reason
        results.append({"start": start, "end": end, "purpose": item.get("purpose", ""), "busy": busy})
    return results


def check_engine(engine: str) -> dict:
    path = shutil.which(engine)
    if not path:
        return {"engine": engine, "path": None, "ok": False, "detail": f"{engine} not found on PATH"}
    try:
        proc = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"engine": engine, "path": path, "ok": False, "detail": str(exc)}
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"engine": engine, "path": path, "ok": proc.returncode == 0,
            "detail": detail[-1] if detail and proc.returncode != 0 else ""}


def main() -> int:
    request = json.loads(base64.b64decode(sys.argv[1]).decode())
    result = {}
    if request.get("mount"):
        with open("/proc/mounts") as handle:
            result["mount"] = find_mount(request["mount"]["path"], handle.read())
    if request.get("disk"):
        result["disk"] = disk_free(request["disk"]["path"])
    result["ports"] = check_ports(request.get("ports") or [])
    if request.get("engine"):
        result["engine"] = check_engine(request["engine"])
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
