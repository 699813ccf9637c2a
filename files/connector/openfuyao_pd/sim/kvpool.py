"""AscendStoreConnector's KV pool for the simulator: the real Mooncake store when it is there.

With ``MOONCAKE_CONFIG_PATH`` naming a mooncake.json (vllm-ascend kv_pool.md, Step 2.2.1) and the
``mooncake.store`` module importable, blocks go to the ``mooncake_master`` at its
``master_server_address`` through ``MooncakeDistributedStore`` over TCP (the simulator has no NPU,
so ``protocol: ascend`` becomes ``tcp`` and the segment is small); keys are the blocks' prefix
hashes, as the connector keys them by token hash. Else ``--sim-kv-pool DIR``: a directory of block
files stands for the store (engine.SharedKvStore).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

SEGMENT_BYTES = 64 * 1024 * 1024  # what one simulated instance mounts into the pool
BUFFER_BYTES = 16 * 1024 * 1024


class PoolError(RuntimeError):
    """The pool cannot be used; the message says why in one line."""


def master_address(config_path: str) -> str:
    try:
        doc = json.loads(Path(config_path).read_text())
    except (OSError, ValueError) as exc:
        raise PoolError(f"MOONCAKE_CONFIG_PATH {config_path} is not a readable mooncake.json: {exc}") from exc
    address = doc.get("master_server_address") if isinstance(doc, dict) else None
    if not isinstance(address, str) or ":" not in address:
        raise PoolError(f"MOONCAKE_CONFIG_PATH {config_path} has no master_server_address HOST:PORT")
    return address


class MooncakePool:
    """Block KV in a Mooncake store (same interface as engine.SharedKvStore: save / load)."""

    def __init__(self, master: str, local_host: str, namespace: str) -> None:
        try:
            from mooncake.store import MooncakeDistributedStore
        except ImportError as exc:
            raise PoolError(f"mooncake.store is not importable ({exc})") from exc
        self.store: Any = MooncakeDistributedStore()
        rc = self.store.setup(local_host, "P2PHANDSHAKE", SEGMENT_BYTES, BUFFER_BYTES, "tcp", "", master)
        if rc != 0:
            raise PoolError(f"MooncakeDistributedStore.setup(master {master}) returned {rc}: is mooncake_master up?")
        self.master = master
        self.namespace = "".join(c if c.isalnum() else "_" for c in namespace)
        self.errors = 0
        self._lock = threading.Lock()

    def _key(self, block_hash: bytes) -> str:
        return f"{self.namespace}/{block_hash.hex()}"

    def save(self, hashes: list[bytes], data: bytes, block_bytes: int) -> int:
        written = 0
        with self._lock:
            for index, block_hash in enumerate(hashes):
                key = self._key(block_hash)
                if self.store.is_exist(key) == 1:
                    continue
                if self.store.put(key, data[index * block_bytes:(index + 1) * block_bytes]) != 0:
                    self.errors += 1
                    return written
                written += block_bytes
        return written

    def load(self, hashes: list[bytes], expected: bytes, block_bytes: int) -> tuple[int, int, str]:
        read = 0
        with self._lock:
            for index, block_hash in enumerate(hashes):
                data = self.store.get(self._key(block_hash))
                if not data:
                    return index, read, "ok" if index else "not-found"
                read += len(data)
                if data != expected[index * block_bytes:(index + 1) * block_bytes]:
                    return index, read, "corrupt"
        return len(hashes), read, "ok"

    def close(self) -> None:
        with self._lock:
            self.store.close()
