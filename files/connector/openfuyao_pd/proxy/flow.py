"""The request flow: route, pick P and D, run them, retry on a fresh pair or fall back to local prefill."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.proxy import codec, kvrelease, limits, protocols, relay
from openfuyao_pd.proxy.context import Hold, RequestCtx
from openfuyao_pd.proxy.errors import BackendFailure, UpstreamClientError, error_body
from openfuyao_pd.proxy.reply import STREAMED, AiohttpReply, Answer, Reply, Result, json_answer
from openfuyao_pd.proxy.routing import (
    Backend,
    block_hashes,
    decide_route,
    estimate_tokens,
    pick_backend,
    priority_for,
    prompt_key,
)
from openfuyao_pd.proxy.sse import with_cached_tokens

LOG = logging.getLogger("openfuyao_pd.proxy")


class RequestFlow:
    """Proxy part (server.Proxy): the completion endpoints, from the client's body to D's answer."""

    opts: dict[str, Any]
    protocol: str
    backends: dict[str, Backend]
    session: aiohttp.ClientSession | None
    pool: relay.Pool
    kv: kvrelease.KvReleaser
    counter: Any
    _id_prefix: str
    _ids: Any
    m_requests: Any
    m_decisions: Any
    m_stage: Any
    m_retries: Any
    m_fallbacks: Any
    m_missing: Any
    m_backend_errors: Any
    m_disconnects: Any
    available: Any  # server.Proxy's
    _failed: Any  # health.HealthChecks'
    _relay: Any  # sse.SseRelay's
    _run_mooncake: Any  # handoffs.Handoffs'
    _run_layerwise: Any  # handoffs.Handoffs'

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
                           held: Hold) -> dict[str, Any]:
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

    async def _run_decode(self, reply: Reply, path: str, backend: Backend, body: dict[str, Any],
                          ctx: RequestCtx) -> Result:
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
                return json_answer(200, data, ctx.request_id)
            try:
                first = await resp.content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.m_backend_errors.inc(backend.name, "decode")
                raise BackendFailure(backend, "decode", f"{type(exc).__name__} before the first chunk") from exc
            if not first:
                self.m_backend_errors.inc(backend.name, "decode")
                raise BackendFailure(backend, "decode", "stream ended before the first chunk")
            self._handoff_done(ctx)
            clean = await self._relay(reply, resp, first, backend, ctx)
            return STREAMED
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # closing the connection makes vLLM abort the request

    def _handoff_done(self, ctx: RequestCtx) -> None:
        if ctx.handoff_start is not None and ctx.handoff_s is None:
            ctx.handoff_s = time.monotonic() - ctx.handoff_start
            self.m_stage.observe("handoff", value=ctx.handoff_s)

    def _first_byte(self, ctx: RequestCtx) -> None:
        ctx.ttft_s = time.monotonic() - ctx.start
        self.m_stage.observe("ttft", value=ctx.ttft_s)
    # -------------------------------------------------------------------------------- request flow
    # aiohttp's handlers, for the connections the lean front (front.py) hands to aiohttp.
    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._aiohttp_generate(request, "/v1/completions", chat=False)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._aiohttp_generate(request, "/v1/chat/completions", chat=True)

    async def _aiohttp_generate(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        reply = AiohttpReply(request)
        body = request[limits.BODY_KEY]  # read, parsed and type-checked by limits.middleware
        result = await self.generate(reply, path, chat, body, request.headers.get("X-Request-Id"),
                                     request.headers.get("Authorization"))
        return reply.response(result)

    async def generate(self, reply: Reply, path: str, chat: bool, body: dict[str, Any], request_id: str | None,
                       auth: str | None) -> Result:
        """Serve one generate request whose body was checked (limits.parse_body); answer or stream it."""
        start = time.monotonic()
        request_id = request_id or f"{self._id_prefix}{next(self._ids):08x}"
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if auth is not None:
            headers["Authorization"] = auth  # forwarded unchanged, never logged
        ctx = RequestCtx(request_id=request_id, endpoint=path, start=start, stream=bool(body.get("stream")),
                         headers=headers)
        try:
            result = await self._serve(reply, path, body, chat, ctx)
            ctx.status = result.status
            return result
        except asyncio.CancelledError:
            ctx.outcome = "client_disconnect"
            raise
        except Exception:
            ctx.outcome = "proxy_error"
            ctx.status = 500
            LOG.exception("proxy error on request %s", request_id)
            return json_answer(500, error_body(500, "internal proxy error"))
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

    async def _serve(self, reply: Reply, path: str, body: dict[str, Any], chat: bool, ctx: RequestCtx) -> Result:
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
                    return await self._run_decode(reply, path, decode, protocols.local_body(body), ctx)
                prefill, p_match = pick_backend(prefills, opts["routing"], counter, hashes,
                                                opts["affinity_max_imbalance_tokens"])
                prefill.prefix.insert(hashes)
                p_held = ctx.hold(prefill, max(1, tokens - p_match * opts["block_tokens"]))
                if self.protocol == "mooncake":
                    return await self._run_mooncake(reply, path, body, prefill, decode, ctx, tokens, p_held)
                if self.protocol == "mooncake_layerwise":
                    return await self._run_layerwise(reply, path, body, prefill, decode, ctx, tokens, p_held)
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
                return await self._run_decode(reply, path, decode, d_body, ctx)
            except UpstreamClientError as exc:
                ctx.outcome = "client_error"
                ctx.kv_pending = None  # D refused it before admission and frees P's blocks itself (§0.2)
                return Answer(exc.status, exc.body, {"Content-Type": exc.content_type, "X-Request-Id": ctx.request_id})
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

    def _exhausted(self, ctx: RequestCtx, last: BackendFailure | None) -> Answer:
        ctx.outcome = "upstream_error"
        if last is not None and last.status is not None and last.body:
            return Answer(last.status, last.body, {"Content-Type": last.content_type, "X-Request-Id": ctx.request_id})
        message = f"no backend could serve the request ({last})" if last else "no healthy decode backend"
        status = 502 if last else 503
        return json_answer(status, error_body(status, message), ctx.request_id)
