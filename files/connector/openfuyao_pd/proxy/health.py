"""Health: the probe loop, ejection after failures and readmission after successes, /health."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.proxy.routing import Backend

LOG = logging.getLogger("openfuyao_pd.proxy")


class HealthChecks:
    """Proxy part (server.Proxy): backend probes and the proxy's own /health."""

    opts: dict[str, Any]
    backends: dict[str, Backend]
    session: aiohttp.ClientSession | None
    protocol: str
    generation: int
    m_backend_errors: Any
    m_ejections: Any
    available: Any  # server.Proxy's

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(b) for b in list(self.backends.values())), return_exceptions=True)
            await asyncio.sleep(self.opts["health_interval"])

    async def probe(self, backend: Backend) -> bool:
        assert self.session is not None
        ok = False
        try:
            timeout = aiohttp.ClientTimeout(total=self.opts["health_timeout"])
            async with self.session.get(backend.url + "/health", timeout=timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        if ok:
            if backend.record_success(self.opts["health_successes"]):
                LOG.warning(json.dumps({"event": "backend_readmitted", "backend": backend.name}))
        else:
            self._failed(backend, "health")
        return ok

    def _failed(self, backend: Backend, stage: str) -> None:
        self.m_backend_errors.inc(backend.name, stage)
        if backend.record_failure(self.opts["health_failures"]):
            self.m_ejections.inc(backend.name)
            LOG.warning(json.dumps({"event": "backend_ejected", "backend": backend.name, "stage": stage}))

    def health_state(self) -> tuple[int, dict[str, Any]]:
        prefill = len(self.available("prefill"))
        decode = len(self.available("decode"))
        state: dict[str, Any] = {"prefill_available": prefill, "decode_available": decode,
                                 "protocol": self.protocol, "generation": self.generation, "pid": os.getpid()}
        if decode == 0:
            return 503, {**state, "status": "unavailable", "reason": "no healthy decode instance"}
        if prefill == 0:
            if not self.opts["fallback_local_prefill"]:
                return 503, {**state, "status": "unavailable",
                             "reason": "no healthy prefill instance and fallback_local_prefill is off"}
            return 200, {**state, "status": "degraded", "reason": "no healthy prefill instance: prefill runs on decode"}
        return 200, {**state, "status": "ok"}

    async def handle_health(self, _request: web.Request) -> web.Response:
        status, body = self.health_state()
        return web.json_response(body, status=status)
