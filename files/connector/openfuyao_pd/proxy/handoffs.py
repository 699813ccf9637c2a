"""P/D handoffs of the Mooncake protocols that do not run P then D: upstream MooncakeConnector
(P and D concurrently, engine id from the bootstrap server) and MooncakeLayerwiseConnector (D
first, P when D posts its blocks to the metaserver)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.proxy import kvrelease, layerwise, protocols
from openfuyao_pd.proxy.context import Hold, RequestCtx
from openfuyao_pd.proxy.errors import BackendFailure
from openfuyao_pd.proxy.reply import Reply, Result
from openfuyao_pd.proxy.routing import Backend, priority_for, url_host


class Handoffs:
    """Proxy part (server.Proxy): the mooncake and mooncake_layerwise request paths."""

    opts: dict[str, Any]
    session: aiohttp.ClientSession | None
    kv: kvrelease.KvReleaser
    metaserver: layerwise.Metaserver
    metaserver_url: str
    m_backend_errors: Any
    _run_prefill: Any  # flow.RequestFlow's
    _run_decode: Any  # flow.RequestFlow's

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

    async def _run_mooncake(self, reply: Reply, path: str, body: dict[str, Any], prefill: Backend,
                            decode: Backend, ctx: RequestCtx, tokens: int, p_held: Hold) -> Result:
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
        d_task = asyncio.create_task(self._run_decode(reply, path, decode, d_body, ctx))
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

    async def _run_layerwise(self, reply: Reply, path: str, body: dict[str, Any], prefill: Backend,
                             decode: Backend, ctx: RequestCtx, tokens: int, p_held: Hold) -> Result:
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
            return await self._run_decode(reply, path, decode, d_body, ctx)
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
