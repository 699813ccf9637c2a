"""Move KV bytes between hosts over TCP with Mooncake's transfer engine (optional).

``mooncake-transfer-engine-non-cuda`` gives a ``TransferEngine`` that, without RDMA devices,
falls back to TCP. Peers find each other without a metadata service (``P2PHANDSHAKE``): a
peer is addressed as ``"<ip>:<rpc port>"``. Import errors (package absent, or its shared
libraries libibverbs1/librdmacm1/libnuma1 missing) are reported by :func:`unavailable_reason`
instead of raised, so callers can fall back to another transport.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

_IMPORT_ERROR: str | None = None
_TransferEngine: Any = None
_LOADED = False


def _load() -> None:
    """Import Mooncake on first use (it is slow to import and often absent)."""
    global _TransferEngine, _IMPORT_ERROR, _LOADED
    if _LOADED:
        return
    _LOADED = True
    os.environ.setdefault("MC_FORCE_TCP", "1")  # never probe RDMA devices: TCP is what we ship
    try:  # pragma: no cover - depends on the host
        from mooncake.engine import TransferEngine
    except Exception as exc:  # ImportError, or OSError from a missing shared library
        _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    else:
        _TransferEngine = TransferEngine


class KvTransferError(RuntimeError):
    """A Mooncake call returned a non-zero status."""


def unavailable_reason() -> str | None:
    """None when Mooncake can be used here, else why not (one line)."""
    _load()
    if _TransferEngine is None:
        return f"mooncake transfer engine not importable ({_IMPORT_ERROR})"
    return None


@dataclass
class Region:
    """A registered host buffer; keep the object alive while a peer may touch it."""

    address: int
    length: int
    _buffer: Any


class MooncakeTcp:
    """One TransferEngine per process (P2PHANDSHAKE, tcp); thread-safe registration."""

    def __init__(self, local_host: str) -> None:
        reason = unavailable_reason()
        if reason:
            raise KvTransferError(reason)
        self._engine = _TransferEngine()
        self._lock = threading.Lock()
        rc = self._engine.initialize(local_host, "P2PHANDSHAKE", "tcp", "")
        if rc != 0:
            raise KvTransferError(f"TransferEngine.initialize({local_host!r}, P2PHANDSHAKE, tcp) returned {rc}")
        self.local_host = local_host
        self.rpc_port = int(self._engine.get_rpc_port())

    @property
    def segment(self) -> str:
        """How peers name this engine: ``host:rpc_port`` (IPv6 hosts in brackets)."""
        host = f"[{self.local_host}]" if ":" in self.local_host else self.local_host
        return f"{host}:{self.rpc_port}"

    def register(self, data: bytes | int) -> Region:
        """Register a buffer holding ``data`` (bytes) or a zeroed one of ``data`` bytes."""
        if isinstance(data, int):
            buffer = ctypes.create_string_buffer(max(data, 1))
            length = data
        else:
            buffer = ctypes.create_string_buffer(data, max(len(data), 1))
            length = len(data)
        address = ctypes.addressof(buffer)
        with self._lock:
            rc = self._engine.register_memory(address, max(length, 1))
        if rc != 0:
            raise KvTransferError(f"register_memory({length} bytes) returned {rc}")
        return Region(address, length, buffer)

    def unregister(self, region: Region) -> None:
        with self._lock:
            self._engine.unregister_memory(region.address)

    @staticmethod
    def read_region(region: Region) -> bytes:
        return ctypes.string_at(region.address, region.length)

    def read(self, peer_segment: str, local: Region, peer_address: int, length: int) -> None:
        """Pull ``length`` bytes from the peer into ``local`` (blocking)."""
        rc = self._engine.transfer_sync_read(peer_segment, local.address, peer_address, length)
        if rc != 0:
            raise KvTransferError(f"transfer_sync_read from {peer_segment} returned {rc}")

    def write(self, peer_segment: str, local: Region, peer_address: int, length: int) -> None:
        """Push ``length`` bytes from ``local`` into the peer's buffer (blocking)."""
        rc = self._engine.transfer_sync_write(peer_segment, local.address, peer_address, length)
        if rc != 0:
            raise KvTransferError(f"transfer_sync_write to {peer_segment} returned {rc}")


_ENGINES: dict[str, MooncakeTcp] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(local_host: str) -> MooncakeTcp:
    """The process-wide engine for ``local_host`` (created on first use)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(local_host)
        if engine is None:
            engine = MooncakeTcp(local_host)
            _ENGINES[local_host] = engine
        return engine
