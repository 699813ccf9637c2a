"""Several workers (`workers: N`): the instance API changes and metrics they share (shared.py)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp

from openfuyao_pd.proxy.config import ROLES, ConfigError, parse_backend
from openfuyao_pd.proxy.routing import Backend


class WorkerSync:
    """Proxy part (server.Proxy): apply the other workers' instance changes, publish metrics on demand."""

    shared: Any
    _seen_version: int
    backends: dict[str, Backend]
    session: aiohttp.ClientSession | None
    _tasks: set[asyncio.Task[Any]]
    registry: Any
    _add_backend: Any  # server.Proxy's
    probe: Any  # health.HealthChecks'

    def sync_instances(self) -> None:
        """Apply the instance API changes the workers share (shared.py) on top of the config."""
        version = self.shared.version
        changes = self.shared.read_changes()
        for name in changes["deleted"]:
            gone = self.backends.pop(name, None)
            if gone is not None:
                gone.removed = True
        for data in changes["added"]:
            if data.get("name") in self.backends or data.get("role") not in ROLES:
                continue
            try:
                spec = parse_backend(data, data["role"], len(self.backends), "instance")
            except ConfigError:
                continue
            backend = self._add_backend(spec)
            backend.ejected = True  # until this worker's own probe succeeds, as after an add
            if self.session is not None:
                self._spawn(self.probe(backend))
        draining = set(changes["draining"])
        for backend in self.backends.values():
            backend.draining = backend.name in draining
        self._seen_version = version
        self.shared.ack_version(version)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _share(self, kind: str, name: str, spec: dict[str, Any] | None = None) -> None:
        """Record an instance API change for every worker and wait (2 s at most) until all applied it."""
        if self.shared is None:
            return
        version = self.shared.change(kind, name, spec)
        self.sync_instances()
        deadline = time.monotonic() + 2.0
        while self.shared.pending_version(version) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _sync_loop(self) -> None:
        """Several workers: apply shared instance changes, publish metrics when a scrape asks."""
        assert self.shared is not None
        published = 0
        while True:
            await asyncio.sleep(0.02)
            if self.shared.version != self._seen_version:
                self.sync_instances()
            epoch = self.shared.epoch
            if epoch != published:
                self.shared.publish(os.getpid(), self.registry.snapshot())
                self.shared.ack_epoch(epoch)
                published = epoch

