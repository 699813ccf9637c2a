"""Stream rewriting: P's cached_tokens put into D's usage, and D's SSE relayed to the client."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from openfuyao_pd.proxy import codec, protocols, relay
from openfuyao_pd.proxy.context import RequestCtx
from openfuyao_pd.proxy.reply import Reply
from openfuyao_pd.proxy.routing import Backend

LOG = logging.getLogger("openfuyao_pd.proxy")
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


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


class SseRelay:
    """Proxy part (server.Proxy): D's stream to the client, usage rewritten, errors as a last event."""

    m_backend_errors: Any
    m_stream_errors: Any
    _first_byte: Any  # flow.RequestFlow's

    async def _relay(self, reply: Reply, resp: relay.Response, first: bytes, backend: Backend,
                     ctx: RequestCtx) -> bool:
        """Stream D's SSE to the client; True when the upstream stream ended cleanly."""
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
            out = await reply.stream({**SSE_HEADERS, "X-Request-Id": ctx.request_id})
            self._first_byte(ctx)
            await out.write(rewrite(first))
        except (ConnectionError, RuntimeError):
            ctx.outcome = "client_disconnect"
            return False
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
                    return False
                if not chunk:
                    break
                await out.write(rewrite(chunk))
            tail = rewrite(b"", final=True)
            if tail:
                await out.write(tail)
            await out.write_eof()
        except (ConnectionError, RuntimeError):
            ctx.outcome = "client_disconnect"
            return False
        return True
