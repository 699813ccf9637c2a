"""The PD proxy: aiohttp server, request flow per protocol, health checks and the instance API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.common import prom
from openfuyao_pd.proxy import admin, codec, kvrelease, layerwise, limits, protocols, relay
from openfuyao_pd.proxy.config import ROLES, BackendSpec, ConfigError, ProxyConfig, parse_backend
from openfuyao_pd.proxy.routing import (
    Backend,
    PrefixIndex,
    block_hashes,
    decide_route,
    estimate_tokens,
    pick_backend,
    priority_for,
    prompt_key,
    url_host,
)

LOG = logging.getLogger("openfuyao_pd.proxy")
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class BackendFailure(Exception):
    """A backend failed before anything reached the client: the request may be retried elsewhere."""

    def __init__(self, backend: Backend, stage: str, reason: str, status: int | None = None,
                 body: bytes = b"", content_type: str = "application/json") -> None:
        super().__init__(f"{stage} {backend.name}: {reason}")
        self.backend = backend
        self.stage = stage
        self.reason = reason
        self.status = status
        self.body = body
        self.content_type = content_type


class UpstreamClientError(Exception):
    """A backend answered 4xx: passed to the client as-is, never retried."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream HTTP {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


@dataclass
class _Hold:
    backend: Backend
    tokens: int
    released: bool = False


@dataclass
class RequestCtx:
    request_id: str
    endpoint: str
    start: float
    stream: bool
    headers: dict[str, str]
    route: str = "none"
    reason: str = "none"
    prefill: str = ""
    decode: str = ""
    outcome: str = "success"
    status: int = 200
    retries: int = 0
    fallback: str = ""
    missing_params: bool = False
    committed: bool = False
    cached_tokens: int | None = None
    prefill_s: float | None = None
    handoff_start: float | None = None
    handoff_s: float | None = None
    ttft_s: float | None = None
    holds: list[_Hold] = field(default_factory=list)
    kv_pending: dict[str, Any] | None = None  # {path, body}: the release request while P holds KV for a D

    def hold(self, backend: Backend, tokens: int) -> _Hold:
        backend.acquire(tokens)
        held = _Hold(backend, tokens)
        self.holds.append(held)
        return held

    @staticmethod
    def release(held: _Hold) -> None:
        if not held.released:
            held.released = True
            held.backend.release(held.tokens)

    def release_all(self) -> None:
        for held in self.holds:
            self.release(held)


def error_body(status: int, message: str, kind: str = "proxy_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def with_cached_tokens(data: bytes, cached: int) -> bytes:
    """A JSON response with P's cached_tokens in its usage: patched in place when the bytes allow it
    (no parse, no re-serialisation), else parsed and rewritten; unchanged if it is not JSON."""
    patched = protocols.patch_cached_tokens(data, cached)
    if patched is not None:
        return patched
    try:
        obj = codec.loads(data)
    except ValueError:
        return data
    return codec.dumps(obj) if protocols.rewrite_usage(obj, cached) else data


def rewrite_sse(block: bytes, cached: int) -> bytes:
    """Rewrite usage.prompt_tokens_details.cached_tokens in complete SSE lines that carry a usage."""
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data: {") and b'"usage"' in line:
            lines[i] = b"data: " + with_cached_tokens(line[6:], cached)
    return b"\n".join(lines)


class Proxy:
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

    # -------------------------------------------------------------------------------- several workers
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

    def refresh_all(self) -> None:
        for backend in self.backends.values():
            backend.refresh()

    # -------------------------------------------------------------------------------- metrics
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

    # -------------------------------------------------------------------------------- health
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

    # -------------------------------------------------------------------------------- upstream calls
    async def _post(self, backend: Backend, stage: str, path: str, body: dict[str, Any], ctx: RequestCtx,
                    read_timeout: float, extra_headers: dict[str, str] | None = None) -> relay.Response:
        headers = ctx.headers if not extra_headers else {**ctx.headers, **extra_headers}
        try:
            return await self.pool.post(backend.host, backend.port, path, codec.dumps(body), headers, read_timeout)
        except relay.UpstreamConnectError as exc:
            # Refused / unreachable: count towards ejection so new requests stop picking it.
            self._failed(backend, stage)
            raise BackendFailure(backend, stage, f"connect failed: {exc.__cause__ or exc}") from exc
        except (TimeoutError, OSError, ValueError) as exc:
            self.m_backend_errors.inc(backend.name, stage)
            raise BackendFailure(backend, stage, f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, resp: relay.Response, backend: Backend, stage: str) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.m_backend_errors.inc(backend.name, stage)
            raise BackendFailure(backend, stage, f"{type(exc).__name__} while reading") from exc

    def _check_status(self, resp: relay.Response, data: bytes, backend: Backend, stage: str) -> None:
        ctype = resp.headers.get("Content-Type", "application/json")
        if 400 <= resp.status < 500:
            raise UpstreamClientError(resp.status, data, ctype)
        if resp.status != 200:
            self.m_backend_errors.inc(backend.name, stage)
            raise BackendFailure(backend, stage, f"HTTP {resp.status}", resp.status, data, ctype)

    async def _run_prefill(self, path: str, backend: Backend, body: dict[str, Any], ctx: RequestCtx,
                           held: _Hold) -> dict[str, Any]:
        """P's answer; `held` (taken when P was picked) is released as soon as P answers or fails."""
        ctx.prefill = backend.name
        started = time.monotonic()
        extra = None
        if backend.options.get("dp_rank") is not None:
            extra = {"X-data-parallel-rank": str(backend.options["dp_rank"])}
        try:
            resp = await self._post(backend, "prefill", path, body, ctx, self.opts["prefill_timeout"], extra)
            try:
                data = await self._read(resp, backend, "prefill")
            finally:
                resp.release()
            self._check_status(resp, data, backend, "prefill")
            try:
                result = codec.loads(data)
            except ValueError:
                raise BackendFailure(backend, "prefill", "response is not JSON") from None
            if not isinstance(result, dict):
                raise BackendFailure(backend, "prefill", "response is not a JSON object")
        finally:
            ctx.release(held)  # the prefill slot is free once P answered (or failed)
        ctx.prefill_s = time.monotonic() - started
        self.m_stage.observe("prefill", value=ctx.prefill_s)
        ctx.cached_tokens = protocols.prefill_cached_tokens(result)
        return result

    async def _run_decode(self, request: web.Request, path: str, backend: Backend, body: dict[str, Any],
                          ctx: RequestCtx) -> web.StreamResponse:
        # D's hold was taken when D was picked and lasts until the stream ends (the handler's finally).
        ctx.decode = backend.name
        resp = await self._post(backend, "decode", path, body, ctx, self.opts["decode_timeout"])
        clean = False
        try:
            if resp.status != 200:
                data = await self._read(resp, backend, "decode")
                self._check_status(resp, data, backend, "decode")
            if not ctx.stream:
                data = await self._read(resp, backend, "decode")
                clean = True
                self._handoff_done(ctx)
                if ctx.cached_tokens is not None and b'"usage"' in data:
                    data = with_cached_tokens(data, ctx.cached_tokens)
                self._first_byte(ctx)
                return web.Response(body=data, status=200, content_type="application/json",
                                    headers={"X-Request-Id": ctx.request_id})
            try:
                first = await resp.content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.m_backend_errors.inc(backend.name, "decode")
                raise BackendFailure(backend, "decode", f"{type(exc).__name__} before the first chunk") from exc
            if not first:
                self.m_backend_errors.inc(backend.name, "decode")
                raise BackendFailure(backend, "decode", "stream ended before the first chunk")
            self._handoff_done(ctx)
            out, clean = await self._relay(request, resp, first, backend, ctx)
            return out
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # closing the connection makes vLLM abort the request

    async def _relay(self, request: web.Request, resp: relay.Response, first: bytes, backend: Backend,
                     ctx: RequestCtx) -> tuple[web.StreamResponse, bool]:
        """Stream D's SSE to the client; also say whether the upstream stream ended cleanly."""
        out = web.StreamResponse(status=200, headers={**SSE_HEADERS, "X-Request-Id": ctx.request_id})
        ctx.committed = True
        pending = b""

        def rewrite(chunk: bytes, final: bool = False) -> bytes:
            nonlocal pending
            if ctx.cached_tokens is None and not pending:
                return chunk
            data = pending + chunk
            cut = len(data) if final else data.rfind(b"\n") + 1
            complete, pending = data[:cut], data[cut:]
            if ctx.cached_tokens is not None and b'"usage"' in complete:
                complete = rewrite_sse(complete, ctx.cached_tokens)
            return complete

        try:
            await out.prepare(request)
            self._first_byte(ctx)
            await out.write(rewrite(first))
        except (ConnectionError, RuntimeError):
            ctx.outcome = "client_disconnect"
            return out, False
        chunk = first
        try:
            while True:
                try:
                    chunk = await resp.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self.m_backend_errors.inc(backend.name, "decode")
                    self.m_stream_errors.inc(backend.name)
                    ctx.outcome = "stream_error"
                    LOG.warning(json.dumps({"event": "stream_error", "request_id": ctx.request_id,
                                            "backend": backend.name, "error": type(exc).__name__}))
                    tail = rewrite(b"", final=True)
                    if tail and not tail.endswith(b"\n\n"):
                        tail = b""  # drop a partial event rather than send broken JSON
                    message = f"decode backend {backend.name} failed mid-stream: {type(exc).__name__}"
                    event = json.dumps({"error": {"message": message, "type": "upstream_error", "code": 502}})
                    await out.write(tail + b"data: " + event.encode() + b"\n\n" + DONE_EVENT)
                    await out.write_eof()
                    return out, False
                if not chunk:
                    break
                await out.write(rewrite(chunk))
            tail = rewrite(b"", final=True)
            if tail:
                await out.write(tail)
            await out.write_eof()
        except (ConnectionError, RuntimeError):
            ctx.outcome = "client_disconnect"
            return out, False
        return out, True

    def _handoff_done(self, ctx: RequestCtx) -> None:
        if ctx.handoff_start is not None and ctx.handoff_s is None:
            ctx.handoff_s = time.monotonic() - ctx.handoff_start
            self.m_stage.observe("handoff", value=ctx.handoff_s)

    def _first_byte(self, ctx: RequestCtx) -> None:
        ctx.ttft_s = time.monotonic() - ctx.start
        self.m_stage.observe("ttft", value=ctx.ttft_s)

    # -------------------------------------------------------------------------------- request flow
    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/completions", chat=False)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/chat/completions", chat=True)

    async def _generate(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        start = time.monotonic()
        body = request[limits.BODY_KEY]  # read, parsed and type-checked by limits.middleware
        request_id = request.headers.get("X-Request-Id") or f"{self._id_prefix}{next(self._ids):08x}"
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        auth = request.headers.get("Authorization")
        if auth is not None:
            headers["Authorization"] = auth  # forwarded unchanged, never logged
        ctx = RequestCtx(request_id=request_id, endpoint=path, start=start, stream=bool(body.get("stream")),
                         headers=headers)
        try:
            response = await self._serve(request, path, body, chat, ctx)
            ctx.status = response.status
            return response
        except asyncio.CancelledError:
            ctx.outcome = "client_disconnect"
            raise
        except Exception:
            ctx.outcome = "proxy_error"
            ctx.status = 500
            LOG.exception("proxy error on request %s", request_id)
            return web.Response(status=500, body=error_body(500, "internal proxy error"),
                                content_type="application/json")
        finally:
            ctx.release_all()
            self._release_kv(ctx, ctx.outcome)
            self._finish(ctx)

    def _release_kv(self, ctx: RequestCtx, reason: str, excluded: set[Backend] | None = None) -> None:
        """P answered but no D took its KV: have a decode take it now (kvrelease.py)."""
        pending, ctx.kv_pending = ctx.kv_pending, None
        if not kvrelease.stranded(pending, ctx.prefill_s is not None, ctx.handoff_s is not None):
            return
        assert pending is not None
        excluded = excluded or set()
        chosen = self.backends.get(ctx.decode)
        if chosen is None or not chosen.available or chosen in excluded:
            chosen = next(iter(self.available("decode", excluded)), None)
        headers = {**ctx.headers, "X-Request-Id": f"{ctx.request_id}-kv-release"}
        self.kv.schedule(self.session, chosen.url if chosen else None, pending["path"], pending["body"], headers,
                         reason)

    def _finish(self, ctx: RequestCtx) -> None:
        e2e = time.monotonic() - ctx.start
        if ctx.outcome == "client_disconnect":
            self.m_disconnects.inc()
        self.m_requests.inc(ctx.endpoint, ctx.route, ctx.outcome)
        self.m_stage.observe("e2e", value=e2e)
        if not LOG.isEnabledFor(logging.INFO):
            return  # the per-request line is built only when someone reads it

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        LOG.info(json.dumps({
            "event": "request", "request_id": ctx.request_id, "endpoint": ctx.endpoint, "stream": ctx.stream,
            "route": ctx.route, "reason": ctx.reason, "prefill": ctx.prefill or None, "decode": ctx.decode or None,
            "outcome": ctx.outcome, "status": ctx.status, "retries": ctx.retries, "fallback": ctx.fallback or None,
            "missing_kv_params": ctx.missing_params, "prefill_ms": ms(ctx.prefill_s), "handoff_ms": ms(ctx.handoff_s),
            "ttft_ms": ms(ctx.ttft_s), "e2e_ms": ms(e2e),
        }))

    async def _serve(self, request: web.Request, path: str, body: dict[str, Any], chat: bool,
                     ctx: RequestCtx) -> web.StreamResponse:
        opts = self.opts
        key, is_ids = prompt_key(body, chat)
        tokens = estimate_tokens(key, is_ids, opts["chars_per_token"])
        hashes = block_hashes(key, is_ids, opts["block_tokens"], opts["chars_per_token"])
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or opts["default_max_tokens"]
        decode_tokens = tokens + (max_tokens if isinstance(max_tokens, int) else opts["default_max_tokens"])
        excluded: set[Backend] = set()
        forced_local = ""
        failures = 0
        last: BackendFailure | None = None
        while True:
            decodes = self.available("decode", excluded)
            if not decodes:
                break
            counter = next(self.counter)
            decode, d_match = pick_backend(decodes, opts["routing"], counter, hashes,
                                           opts["affinity_max_imbalance_tokens"])
            uncached = max(0, tokens - d_match * opts["block_tokens"])
            prefills = self.available("prefill", excluded)
            if forced_local:
                route, reason = "local", forced_local
            else:
                queue = min(p.inflight_requests for p in prefills) if prefills else None
                route, reason = decide_route(uncached, queue, decode.inflight_requests,
                                             opts["local_prefill_max_tokens"], opts["prefill_queue_threshold"],
                                             opts["decode_busy_threshold"])
                if failures == 0:
                    self.m_decisions.inc(route, reason)
            ctx.route, ctx.reason = route, reason
            decode.prefix.insert(hashes)
            # Count the request on D now, not when P has answered: otherwise every request of a burst
            # sees the same idle D and affinity piles them up there.
            ctx.hold(decode, decode_tokens)
            try:
                if route == "local":
                    ctx.prefill = ""
                    return await self._run_decode(request, path, decode, protocols.local_body(body), ctx)
                prefill, p_match = pick_backend(prefills, opts["routing"], counter, hashes,
                                                opts["affinity_max_imbalance_tokens"])
                prefill.prefix.insert(hashes)
                p_held = ctx.hold(prefill, max(1, tokens - p_match * opts["block_tokens"]))
                if self.protocol == "mooncake":
                    return await self._run_mooncake(request, path, body, prefill, decode, ctx, tokens, p_held)
                if self.protocol == "mooncake_layerwise":
                    return await self._run_layerwise(request, path, body, prefill, decode, ctx, tokens, p_held)
                p_body = protocols.prefill_body(body, self.protocol)
                if opts["batch_priority"] and "priority" not in body:
                    p_body["priority"] = priority_for(tokens, opts["priority_buckets"])
                result = await self._run_prefill(path, prefill, p_body, ctx, p_held)
                params = protocols.returned_params(result) if self.protocol in protocols.NEEDS_PARAMS else None
                if self.protocol in protocols.NEEDS_PARAMS and params is None:
                    ctx.missing_params = True
                    self.m_missing.inc(prefill.name)
                    LOG.warning(json.dumps({"event": "missing_kv_params", "request_id": ctx.request_id,
                                            "prefill": prefill.name, "note": "decode will recompute the prompt"}))
                ctx.handoff_start = time.monotonic()
                d_body = protocols.decode_body(body, self.protocol, params)
                if params is not None and self.kv.wants(self.protocol):
                    ctx.kv_pending = {"path": path, "body": kvrelease.release_body(d_body)}
                return await self._run_decode(request, path, decode, d_body, ctx)
            except UpstreamClientError as exc:
                ctx.outcome = "client_error"
                ctx.kv_pending = None  # D refused it before admission and frees P's blocks itself (§0.2)
                return web.Response(status=exc.status, body=exc.body, headers={"Content-Type": exc.content_type,
                                                                               "X-Request-Id": ctx.request_id})
            except BackendFailure as exc:
                last = exc
                failures += 1
                excluded.add(exc.backend)
                if exc.stage == "decode":
                    self._release_kv(ctx, "decode_failed", excluded)  # the retry prefills again
                ctx.kv_pending = None
                ctx.release_all()
                ctx.cached_tokens = None
                ctx.handoff_start = ctx.handoff_s = None
                LOG.warning(json.dumps({"event": "backend_failure", "request_id": ctx.request_id,
                                        "backend": exc.backend.name, "stage": exc.stage, "reason": exc.reason}))
                can_retry = ctx.retries < opts["max_retries"]
                other_prefill = bool(self.available("prefill", excluded))
                if exc.stage == "prefill" and opts["fallback_local_prefill"] and not (can_retry and other_prefill):
                    forced_local = "prefill_failed"
                    ctx.fallback = "prefill_failed"
                    self.m_fallbacks.inc("prefill_failed")
                    continue
                if not can_retry:
                    break
                ctx.retries += 1
                self.m_retries.inc(exc.stage)
        return self._exhausted(ctx, last)

    def _exhausted(self, ctx: RequestCtx, last: BackendFailure | None) -> web.Response:
        ctx.outcome = "upstream_error"
        headers = {"X-Request-Id": ctx.request_id}
        if last is not None and last.status is not None and last.body:
            return web.Response(status=last.status, body=last.body, headers={**headers,
                                                                             "Content-Type": last.content_type})
        message = f"no backend could serve the request ({last})" if last else "no healthy decode backend"
        status = 502 if last else 503
        return web.Response(status=status, body=error_body(status, message), content_type="application/json",
                            headers=headers)

    async def _engine_id(self, backend: Backend) -> str:
        """Upstream MooncakeConnector: the prefill's engine id for its DP rank.

        The bootstrap server's `GET /query` is authoritative (with DP > 1 every rank has its own id);
        a configured `engine_id` is only the fallback when the bootstrap server does not answer.
        """
        if backend.engine_id_queried and backend.engine_id:
            return backend.engine_id
        assert self.session is not None
        url = self._bootstrap_addr(backend) + "/query"
        try:
            timeout = aiohttp.ClientTimeout(total=self.opts["connect_timeout"])
            async with self.session.get(url, timeout=timeout) as resp:
                data = await resp.json(content_type=None)
            rank = str(backend.options.get("dp_rank", 0))
            entry = data.get(rank) if isinstance(data, dict) else None
            if entry is None and isinstance(data, dict) and data:
                entry = next(iter(data.values()))
            backend.engine_id = str(entry["engine_id"])
            backend.engine_id_queried = True
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
            self.m_backend_errors.inc(backend.name, "bootstrap")
            if backend.engine_id:
                return backend.engine_id
            raise BackendFailure(backend, "prefill", f"bootstrap query {url} failed: {type(exc).__name__}") from exc
        return backend.engine_id

    def _bootstrap_addr(self, backend: Backend) -> str:
        host = backend.options.get("bootstrap_host") or backend.address
        port = backend.options.get("bootstrap_port") or self.opts["bootstrap_port"]
        return f"http://{url_host(str(host))}:{port}"

    async def _run_mooncake(self, request: web.Request, path: str, body: dict[str, Any], prefill: Backend,
                            decode: Backend, ctx: RequestCtx, tokens: int, p_held: _Hold) -> web.StreamResponse:
        """Upstream MooncakeConnector: P and D run concurrently under one transfer_id."""
        engine_id = await self._engine_id(prefill)
        transfer_id = protocols.new_transfer_id()
        p_body = protocols.prefill_body(body, "mooncake", transfer_id)
        if self.opts["batch_priority"] and "priority" not in body:
            p_body["priority"] = priority_for(tokens, self.opts["priority_buckets"])
        d_body = protocols.decode_body(body, "mooncake", transfer_id=transfer_id,
                                       bootstrap_addr=self._bootstrap_addr(prefill), engine_id=engine_id)
        ctx.handoff_start = time.monotonic()
        if self.kv.wants("mooncake"):
            ctx.kv_pending = {"path": path, "body": kvrelease.release_body(d_body)}
        p_task = asyncio.create_task(self._run_prefill(path, prefill, p_body, ctx, p_held))
        d_task = asyncio.create_task(self._run_decode(request, path, decode, d_body, ctx))
        try:
            done, _ = await asyncio.wait({p_task, d_task}, return_when=asyncio.FIRST_COMPLETED)
            if p_task in done and p_task.exception() is not None and not ctx.committed and not d_task.done():
                # P failed before the client saw anything: abandon D and let the caller re-pair.
                d_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await d_task
                raise p_task.exception()  # type: ignore[misc]
            return await d_task
        finally:
            for task in (p_task, d_task):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                elif not task.cancelled():
                    task.exception()  # mark retrieved

    async def _run_layerwise(self, request: web.Request, path: str, body: dict[str, Any], prefill: Backend,
                             decode: Backend, ctx: RequestCtx, tokens: int, p_held: _Hold) -> web.StreamResponse:
        """MooncakeLayerwiseConnector: D first; P is sent when D posts its blocks (layerwise.py)."""
        children = protocols.child_request_ids(path, ctx.request_id, body)

        async def send_prefill(posted: dict[str, dict[str, Any]]) -> None:
            p_body = protocols.layerwise_prefill_body(body, posted, children)
            if self.opts["batch_priority"] and "priority" not in body:
                p_body["priority"] = priority_for(tokens, self.opts["priority_buckets"])
            await self._run_prefill(path, prefill, p_body, ctx, p_held)
            ctx.handoff_start = time.monotonic()  # P has pushed the last layer: D decodes from here

        pending = self.metaserver.register(children, send_prefill)
        try:
            d_body = protocols.layerwise_decode_body(body, self.metaserver_url)
            return await self._run_decode(request, path, decode, d_body, ctx)
        finally:
            if pending.task is None:
                ctx.release(p_held)  # D never asked for the prefill
            await self.metaserver.forget(pending)

    async def handle_metaserver(self, request: web.Request) -> web.Response:
        """A layerwise decode posts where its blocks are; answered once the prefill pushed them."""
        try:
            params = await request.json()
        except ValueError:
            params = None
        status, answer = await self.metaserver.post(params)
        if status != 200:
            self.m_backend_errors.inc("metaserver", str(status))
        return web.json_response(answer, status=status)

    # -------------------------------------------------------------------------------- other endpoints
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

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        others: list[tuple[bool, dict[str, Any]]] = []
        if self.shared is not None:  # the sum over every worker: ask the others for fresh values
            epoch = self.shared.bump_epoch()
            deadline = time.monotonic() + 1.0
            while self.shared.pending_epoch(epoch) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            others = self.shared.snapshots(os.getpid())
        return web.Response(body=self.registry.render(others).encode(), headers={"Content-Type": prom.CONTENT_TYPE})

    # -------------------------------------------------------------------------------- instance API
    async def handle_list_instances(self, _request: web.Request) -> web.Response:
        if self.shared is not None:
            if self.shared.version != self._seen_version:
                self.sync_instances()
            self.refresh_all()
        return web.json_response({"instances": [b.describe() for b in self.backends.values()]})

    async def handle_add_instance(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON {name, role, address, port}"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "body must be a JSON object {name, role, address, port}"}, status=400)
        role = data.get("role")
        if role not in ROLES:
            return web.json_response({"error": f"role must be one of {', '.join(ROLES)}"}, status=400)
        try:
            spec = parse_backend(data, role, len(self.backends), "instance")
        except ConfigError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if spec.name in self.backends:
            return web.json_response({"error": f"instance {spec.name} already exists"}, status=409)
        backend = self._add_backend(spec)
        if not await self.probe(backend):
            # Not serving yet (still loading the model?): keep it out until a probe succeeds.
            backend.ejected = True
        await self._share("add", spec.name, {**data, "role": role, "name": spec.name})
        LOG.warning(json.dumps({"event": "instance_added", "backend": backend.name, "role": role}))
        return web.json_response(backend.describe(), status=201)

    def _lookup(self, request: web.Request) -> Backend | None:
        return self.backends.get(request.match_info["name"])

    def _timeout_param(self, request: web.Request) -> float:
        try:
            return max(0.0, float(request.query.get("timeout", self.opts["drain_timeout"])))
        except ValueError:
            return self.opts["drain_timeout"]

    async def _drain(self, backend: Backend, timeout: float) -> bool:
        backend.draining = True
        await self._share("drain", backend.name)
        deadline = time.monotonic() + timeout
        backend.refresh()
        while backend.inflight_requests > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            backend.refresh()
        return backend.inflight_requests == 0

    async def handle_drain(self, request: web.Request) -> web.Response:
        backend = self._lookup(request)
        if backend is None:
            return web.json_response({"error": f"no instance {request.match_info['name']}"}, status=404)
        drained = await self._drain(backend, self._timeout_param(request))
        return web.json_response({**backend.describe(), "drained": drained})

    async def handle_undrain(self, request: web.Request) -> web.Response:
        backend = self._lookup(request)
        if backend is None:
            return web.json_response({"error": f"no instance {request.match_info['name']}"}, status=404)
        backend.draining = False
        await self._share("undrain", backend.name)
        return web.json_response(backend.describe())

    async def handle_delete(self, request: web.Request) -> web.Response:
        backend = self._lookup(request)
        if backend is None:
            return web.json_response({"error": f"no instance {request.match_info['name']}"}, status=404)
        drained = await self._drain(backend, self._timeout_param(request))
        backend.removed = True
        self.backends.pop(backend.name, None)
        await self._share("delete", backend.name)
        LOG.warning(json.dumps({"event": "instance_removed", "backend": backend.name, "drained": drained}))
        return web.json_response({**backend.describe(), "removed": True, "drained": drained})


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
                              cfg.port if port is None else port, backlog=1024, sock=sock, counts=counts)
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
    await runner.cleanup()
    return drained
