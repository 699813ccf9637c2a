#!/usr/bin/env python3
"""Host-side check the vllm_pd role runs through ansible.builtin.script.

  pd_host.py ports JSON       which of the listed (address, port) pairs cannot be bound

Prints one JSON line; never a traceback (the role turns the JSON into a one-line error).
Standard library only: it runs with the host's python3, before any venv exists.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
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


def main(argv: list[str]) -> int:
    try:
        verb, payload = argv[1], json.loads(argv[2])
        if verb != "ports":
            raise ValueError(f"unknown verb {verb}")
        result = check_ports(payload)
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        result = {"ok": False, "why": f"bad arguments: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
