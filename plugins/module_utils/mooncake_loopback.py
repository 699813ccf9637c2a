# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Verify a Mooncake install with a real transfer (PRIVATE to this collection).

Two processes on loopback: one writes a seeded pattern into the other's registered buffer over TCP
(P2PHANDSHAKE, no metadata service), and the receiver checks every byte.

This file has two sides. The module openfuyao.pd.mooncake_loopback writes its source into the
module's temporary directory and runs it with the stack venv's python (where Mooncake is
installed, which the module's own interpreter need not have): ``python mooncake_loopback.py BYTES``
prints one JSON line (`transfer`) and exits 0 even when the transfer fails. The module then reads
that line back with `parse_output`. Standard library only; Mooncake is imported in the venv alone.
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

DEFAULT_BYTES = 8 << 20
WRITER_TIMEOUT_S = 120


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


def transfer(size: int) -> dict[str, Any]:
    """The receiver's side: start a writer process, wait for its bytes, check them."""
    os.environ.setdefault("MC_FORCE_TCP", "1")  # loopback TCP, whatever HCAs the host has
    try:
        eng = engine()
    except Exception as exc:
        return {"ok": False, "why": f"cannot start the transfer engine ({type(exc).__name__}: {exc})"}
    buf = ctypes.create_string_buffer(size)
    addr = ctypes.addressof(buf)
    if eng.register_memory(addr, size) != 0:
        return {"ok": False, "why": "register_memory failed on the receiver"}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=writer, args=(size, f"127.0.0.1:{eng.get_rpc_port()}", addr, out))
    proc.start()
    try:
        res = out.get(timeout=WRITER_TIMEOUT_S)
    except Exception:
        res = {"rc": -1, "error": f"writer gave no answer in {WRITER_TIMEOUT_S} s"}
    proc.join(timeout=30)
    if res.get("rc") != 0:
        return {"ok": False, "why": f"transfer_sync_write failed: {res.get('error', res.get('rc'))}"}
    same = ctypes.string_at(addr, size) == pattern(size)
    secs = max(res["seconds"], 1e-9)
    return {"ok": same, "bytes": size, "seconds": round(secs, 4), "gbytes_per_s": round(size / secs / 1e9, 3),
            "why": "" if same else "bytes received differ from bytes sent"}


def parse_output(rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The script's result from its output: its last JSON line, or why there is none (one line)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                break
            if isinstance(doc, dict) and isinstance(doc.get("ok"), bool):
                doc.setdefault("why", "")
                return doc
            break
    last = next((x.strip() for x in reversed(stderr.splitlines()) if x.strip()), "")
    why = f"the check printed no result (exit {rc})"
    return {"ok": False, "why": f"{why}: {last[-300:]}" if last else why}


def main(argv: list[str]) -> int:
    size = int(argv[0]) if argv else DEFAULT_BYTES
    # The script half writes its one JSON line itself: print() and sys.exit() are a module's
    # bad functions, and this half runs as a plain script under the Mooncake venv's python.
    sys.stdout.write(json.dumps(transfer(size)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
