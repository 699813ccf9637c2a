"""The PD proxy's aiohttp app: one Proxy object, its routes, start-up and shutdown.

Each concern lives in its own module, and Proxy is put together from their parts:
- front.py: the lean HTTP/1.1 front that serves the generate routes (aiohttp serves the rest);
- reply.py: how the flow answers (a complete Answer or a stream), whichever server carries it;
- flow.py: the completion endpoints (routing, P then D, retries, fallback to local prefill);
- handoffs.py: the upstream Mooncake and layerwise request paths;
- sse.py: D's stream to the client and the usage rewrite;
- health.py: probes, ejection and readmission, /health;
- metrics.py: the metrics and /metrics (prometheus_client);
- admin.py: the instance API and its authentication;
- workers.py: what several workers share (instance changes, metrics);
- errors.py and context.py: the flow's errors and per-request state;
- relay.py: the upstream HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.proxy import admin, front, kvrelease, layerwise, limits, relay
from openfuyao_pd.proxy.admin import InstanceApi
from openfuyao_pd.proxy.config import BackendSpec, ProxyConfig
from openfuyao_pd.proxy.errors import error_body
from openfuyao_pd.proxy.flow import RequestFlow
from openfuyao_pd.proxy.handoffs import Handoffs
from openfuyao_pd.proxy.health import HealthChecks
from openfuyao_pd.proxy.metrics import ProxyMetrics
from openfuyao_pd.proxy.routing import Backend, PrefixIndex, url_host
from openfuyao_pd.proxy.sse import SseRelay
from openfuyao_pd.proxy.workers import WorkerSync


class Proxy(RequestFlow, Handoffs, SseRelay, HealthChecks, ProxyMetrics, InstanceApi, WorkerSync):
    def __init__(self, cfg: ProxyConfig, shared: Any = None) -> None:
        self.cfg = cfg
        self.shared = shared  # shared.State when the master runs several workers, else None
        self._seen_version = 0
        self.opts = cfg.options
        self.protocol = cfg.protocol
        self.backends: dict[str, Backend] = {}
        for spec in [*cfg.prefill, *cfg.decode]:
            self._add_backend(spec)
        self.counter = itertools.count()
        # Request ids: a random prefix per process and a counter (unique, and cheaper than a uuid4 each).
        self._id_prefix, self._ids = uuid.uuid4().hex[:16], itertools.count()
        self.session: aiohttp.ClientSession | None = None
        # P's and D's POSTs go through the lean client (relay.py); probes and admin calls use aiohttp.
        self.pool = relay.Pool(self.opts["connect_timeout"])
        self._health_task: asyncio.Task[None] | None = None
        self._setup_metrics()
        self.client_limits = limits.ClientLimits(self.registry)
        self.guard = limits.ConnectionGuard(self.opts, self.client_limits)
        self.kv = kvrelease.KvReleaser(self.opts, self.registry)
        self.metaserver = layerwise.Metaserver()
        self.metaserver_url = ""  # set by start() once the port is bound
        self._tasks: set[asyncio.Task[Any]] = set()
        self.generation = 0  # the master's reload count (master.py); /health shows it with the pid
        self._sync_task: asyncio.Task[None] | None = None
        if shared is not None:
            self.sync_instances()

    # -------------------------------------------------------------------------------- backends
    def _add_backend(self, spec: BackendSpec) -> Backend:
        backend = Backend(name=spec.name, role=spec.role, address=spec.address, port=spec.port,
                          options=spec.options, prefix=PrefixIndex(self.opts["prefix_cache_blocks"]))
        if spec.options.get("engine_id") is not None:
            backend.engine_id = str(spec.options["engine_id"])
        if self.shared is not None:
            backend.col = self.shared.column(spec.name)
            if backend.col >= 0:  # a full name table leaves this one counted per worker
                backend.cells = self.shared
        self.backends[spec.name] = backend
        return backend

    def available(self, role: str, exclude: set[Backend] | frozenset[Backend] = frozenset()) -> list[Backend]:
        if self.shared is None:
            return [b for b in self.backends.values() if b.role == role and b.available and b not in exclude]
        if self.shared.version != self._seen_version:
            self.sync_instances()
        out = [b for b in self.backends.values() if b.role == role and b.available and b not in exclude]
        for backend in out:
            backend.refresh()
        return out

    def refresh_all(self) -> None:
        for backend in self.backends.values():
            backend.refresh()

    def front_factory(self, aiohttp_handler: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """Connection factory of the lean front (front.py), falling back on aiohttp's handler."""
        app = front.FrontApp(self, self.guard, self.opts)
        return lambda: front.Front(app, aiohttp_handler)

    # -------------------------------------------------------------------------------- lifecycle
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.opts["max_body_bytes"],
                              middlewares=[limits.middleware(self.opts, self.guard),
                                           admin.middleware(self.cfg.admin_token_file)])
        app[limits.GUARD_KEY] = self.guard
        app.on_response_prepare.append(limits.ConnectionGuard.on_prepare)
        app.router.add_post("/v1/completions", self.handle_completions)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_get("/v1/models", self.handle_models)
        if self.protocol == "mooncake_layerwise":
            app.router.add_post("/v1/metaserver", self.handle_metaserver)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/v1/instances", self.handle_list_instances)
        app.router.add_post("/v1/instances", self.handle_add_instance)
        app.router.add_post("/v1/instances/{name}/drain", self.handle_drain)
        app.router.add_post("/v1/instances/{name}/undrain", self.handle_undrain)
        app.router.add_delete("/v1/instances/{name}", self.handle_delete)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._health_task = asyncio.create_task(self._health_loop())
        if self.shared is not None:
            self._sync_task = asyncio.create_task(self._sync_loop())

    async def _on_cleanup(self, _app: web.Application) -> None:
        for task in (self._health_task, self._sync_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.shared is not None:  # this worker's last values stay in the sums
            self.shared.publish(os.getpid(), self.registry.snapshot())
        await self.kv.close()
        self.pool.close()
        if self.session:
            await self.session.close()

    async def handle_models(self, _request: web.Request) -> web.Response:
        assert self.session is not None
        for backend in self.available("decode"):
            try:
                timeout = aiohttp.ClientTimeout(total=self.opts["health_timeout"] + self.opts["connect_timeout"])
                async with self.session.get(backend.url + "/v1/models", timeout=timeout) as resp:
                    data = await resp.read()
                    if resp.status == 200:
                        return web.Response(body=data, content_type="application/json")
            except (TimeoutError, aiohttp.ClientError, OSError):
                continue
        return web.Response(status=503, body=error_body(503, "no healthy decode backend answered /v1/models"),
                            content_type="application/json")


async def start(cfg: ProxyConfig, host: str | None = None, port: int | None = None,
                sock: socket.socket | None = None, generation: int = 0,
                shared: Any = None) -> tuple[web.AppRunner, Proxy, int]:
    """Start the proxy on (host, port), or on a listening socket handed down by the master (with
    the state its workers share); return the runner, the proxy and the bound port (port 0 = any)."""
    proxy = Proxy(cfg, shared)
    proxy.generation = generation
    runner = web.AppRunner(proxy.app(), handler_cancellation=True, access_log=None,
                           keepalive_timeout=cfg.options["keepalive_timeout"],
                           shutdown_timeout=1.0,  # after drain(): only what outlived the drain timeout is left
                           lingering_time=1.0)  # unread body after a 408/413: read at most 1 s of it, then close
    await runner.setup()
    # Several workers on the master's one socket accept in balance; one worker needs no gate.
    counts = shared if sock is not None and shared is not None and cfg.options["workers"] > 1 else None
    site = limits.GuardedSite(runner, proxy.guard, host if host is not None else cfg.listen_host,
                              cfg.port if port is None else port, backlog=1024, sock=sock, counts=counts,
                              front=None if os.environ.get("PD_PROXY_AIOHTTP_FRONT") else proxy.front_factory)
    await site.start()
    advertise = cfg.advertise_host or cfg.listen_host
    if advertise in ("0.0.0.0", "::", ""):
        advertise = "127.0.0.1"
    proxy.metaserver_url = f"http://{url_host(advertise)}:{site.bound_port}/v1/metaserver"
    return runner, proxy, site.bound_port


async def stop(runner: web.AppRunner, proxy: Proxy) -> bool:
    """Graceful stop: close the listener, let requests in progress (streams too) finish within the
    drain_timeout option, then clean up. True when nothing was cut."""
    for site in list(runner.sites):
        await site.stop()
    drained = await proxy.guard.drain(proxy.opts["drain_timeout"])
    if not drained:
        proxy.guard.abort_lean()
    await runner.cleanup()
    return drained
