"""The proxy's metrics (common/prom.py's registry) and /metrics, summed over the workers when there are several."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiohttp import web

from openfuyao_pd.common import prom
from openfuyao_pd.proxy.routing import Backend


class ProxyMetrics:
    """Proxy part (server.Proxy): the proxy's metrics and /metrics (summed over workers when several)."""

    shared: Any
    backends: dict[str, Backend]
    refresh_all: Any  # server.Proxy's

    def _setup_metrics(self) -> None:
        reg = self.registry = prom.Registry()
        self.m_requests = reg.counter("pd_proxy_requests_total", "Client requests by endpoint, route and outcome.",
                                      ("endpoint", "route", "outcome"))
        self.m_decisions = reg.counter("pd_proxy_route_decisions_total",
                                       "Routing decisions (local prefill on decode vs disaggregated) and why.",
                                       ("decision", "reason"))
        self.m_stage = reg.histogram("pd_proxy_stage_seconds",
                                     "Latency per stage: prefill, handoff (prefill done to first decode byte), "
                                     "ttft (first byte to the client), e2e.", ("stage",))
        self.m_retries = reg.counter("pd_proxy_retries_total", "Retries on a fresh P/D pair, by failed stage.",
                                     ("stage",))
        self.m_fallbacks = reg.counter("pd_proxy_fallbacks_total", "Falls back to local prefill on decode.",
                                       ("reason",))
        self.m_missing = reg.counter("pd_proxy_missing_kv_params_total",
                                     "Prefill responses without kv_transfer_params (decode recomputes).", ("backend",))
        self.m_backend_errors = reg.counter("pd_proxy_backend_errors_total", "Backend failures by stage.",
                                            ("backend", "stage"))
        self.m_ejections = reg.counter("pd_proxy_backend_ejections_total", "Backends ejected after failures.",
                                       ("backend",))
        self.m_disconnects = reg.counter("pd_proxy_client_disconnects_total", "Clients gone before the end.")
        self.m_stream_errors = reg.counter("pd_proxy_stream_errors_total",
                                           "Streams ended with an error event after the first byte.", ("backend",))
        reg.gauge("pd_proxy_backend_inflight_requests", "In-flight requests per backend.", ("backend", "role"),
                  collect=lambda: [((b.name, b.role), b.inflight_requests) for b in self._refreshed()])
        reg.gauge("pd_proxy_backend_inflight_tokens", "In-flight estimated tokens per backend.", ("backend", "role"),
                  collect=lambda: [((b.name, b.role), b.inflight_tokens) for b in self._refreshed()])
        reg.gauge("pd_proxy_backend_healthy", "1 when the backend is routable (healthy, not ejected/draining).",
                  ("backend", "role"),
                  collect=lambda: [((b.name, b.role), 1 if b.available and b.healthy else 0)
                                   for b in self.backends.values()])

    def _refreshed(self) -> list[Backend]:
        self.refresh_all()
        return list(self.backends.values())

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        others: list[tuple[bool, dict[str, Any]]] = []
        if self.shared is not None:  # the sum over every worker: ask the others for fresh values
            epoch = self.shared.bump_epoch()
            deadline = time.monotonic() + 1.0
            while self.shared.pending_epoch(epoch) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            others = self.shared.snapshots(os.getpid())
        return web.Response(body=self.registry.render(others).encode(), headers={"Content-Type": prom.CONTENT_TYPE})
