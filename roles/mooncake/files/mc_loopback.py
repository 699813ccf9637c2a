#!/usr/bin/env python3
"""Verify a Mooncake install with a real transfer: two processes on loopback, one writes a
seeded pattern into the other's registered buffer over TCP (P2PHANDSHAKE, no metadata
service), and the receiver checks every byte. Prints one JSON line; exit 0 even on failure
(the role reads `ok` and `why`).

Usage: mc_loopback.py BYTES
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

os.environ.setdefault("MC_FORCE_TCP", "1")  # loopback TCP, whatever HCAs the host has


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"openfuyao-pd").digest()
    return (block * (size // len(block) + 1))[:size]


def engine() -> Any:
    from mooncake.engine import TransferEngine

    eng = TransferEngine()
    rc = eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        raise RuntimeError(f"TransferEngine.initialize returned {rc}")
    return eng


def writer(size: int, peer: str, remote_addr: int, out: Any) -> None:
    try:
        eng = engine()
        buf = ctypes.create_string_buffer(pattern(size), size)
        addr = ctypes.addressof(buf)
        if eng.register_memory(addr, size) != 0:
            raise RuntimeError("register_memory failed on the writer")
        start = time.monotonic()
        rc = eng.transfer_sync_write(peer, addr, remote_addr, size)
        out.put({"rc": rc, "seconds": time.monotonic() - start})
    except Exception as exc:
        out.put({"rc": -1, "error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 8 << 20
    try:
        eng = engine()
    except Exception as exc:
        print(json.dumps({"ok": False, "why": f"cannot start the transfer engine ({type(exc).__name__}: {exc})"}))
        return 0
    buf = ctypes.create_string_buffer(size)
    addr = ctypes.addressof(buf)
    if eng.register_memory(addr, size) != 0:
        print(json.dumps({"ok": False, "why": "register_memory failed on the receiver"}))
        return 0
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=writer, args=(size, f"127.0.0.1:{eng.get_rpc_port()}", addr, out))
    proc.start()
    try:
        res = out.get(timeout=120)
    except Exception:
        res = {"rc": -1, "error": "writer gave no answer in 120 s"}
    proc.join(timeout=30)
    if res.get("rc") != 0:
        print(json.dumps({"ok": False, "why": f"transfer_sync_write failed: {res.get('error', res.get('rc'))}"}))
        return 0
    same = ctypes.string_at(addr, size) == pattern(size)
    secs = max(res["seconds"], 1e-9)
    print(json.dumps({"ok": same, "bytes": size, "seconds": round(secs, 4),
                      "gbytes_per_s": round(size / secs / 1e9, 3),
                      "why": "" if same else "bytes received differ from bytes sent"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
