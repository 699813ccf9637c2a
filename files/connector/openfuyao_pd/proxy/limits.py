"""Slow and hostile clients: connection cap, header/body read timeouts, body size, JSON errors.

aiohttp has no header read timeout (a connection that never finishes its first request line
is kept forever) and no cap on connections. `ConnectionGuard` wraps aiohttp's protocol
factory: it refuses connections beyond `max_connections` with a 503 JSON answer, and closes a
connection whose request headers are not complete `header_timeout` seconds after it opened
(kept-alive connections are closed by aiohttp's own `keepalive_timeout` when idle, partial
headers included). `middleware` bounds the body read (`body_timeout`, `max_body_bytes`),
answers every error with an OpenAI-shaped JSON body, and checks the request JSON (nesting
depth, types of `stream`, `n`, `max_tokens`) before the request handler sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web, web_protocol

from openfuyao_pd.proxy import accept, codec
from openfuyao_pd.proxy.metrics import Registry

LOG = logging.getLogger("openfuyao_pd.proxy")
GENERATE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
BODY_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("pd_body", dict)  # request key under which the checked JSON body is handed to the handler


def error_json(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()


def raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer written straight to a transport that aiohttp does not serve."""
    body = error_json(status, message, "server_error" if status >= 500 else "invalid_request_error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class JsonErrorHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering malformed HTTP with a JSON error instead of text/plain.

    A bad request line or header is the client's fault: one debug line, no traceback in the log.
    """

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            super().handle_error(request, status, exc, message)  # logs it: a fault of ours
            text = "internal proxy error"
        else:
            if request.writer.output_size > 0:
                raise ConnectionError("response already started, cannot send the error")
            LOG.debug("bad HTTP request from %s: %s", request.remote, message or status)
            text = f"{HTTPStatus(status).phrase}: {(message or '').strip()}"[:300].rstrip(": ")
        resp = _json_error(status, text)
        resp.force_close()
        return resp


def handler_factory(server: Any) -> Callable[[], Any]:
    """Like aiohttp's Server() call, with JsonErrorHandler (its private `_loop`/`_kwargs` when present)."""
    loop, kwargs = getattr(server, "_loop", None), getattr(server, "_kwargs", None)
    if loop is None or kwargs is None:
        return server  # an aiohttp without them: keep its own handler (text/plain parse errors)
    return lambda: JsonErrorHandler(server, loop=loop, **kwargs)


class ClientLimits:
    """Counters for the limits, registered on the proxy's Prometheus registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.rejected = registry.counter("pd_proxy_client_rejected_total",
                                         "Client requests or connections refused by a limit, by reason.", ("reason",))


class _Guarded:
    """asyncio protocol in front of one aiohttp RequestHandler (a plain delegate, plus a deadline)."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.refused = False
        self.in_request = False
        self.deadline: float | None = None
        self.idle_since = time.monotonic()  # when the last request ended (drain closes long-idle ones)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.guard.connections) >= self.guard.max_connections:
            self.refused = True
            self.guard.count("max_connections")
            with contextlib.suppress(Exception):
                transport.write(raw_response(  # type: ignore[attr-defined]
                    503, "Service Unavailable", f"too many connections (max_connections={self.guard.max_connections})"))
                transport.close()
            return
        self.guard.connections[transport] = self
        self.deadline = time.monotonic() + self.guard.header_timeout
        self.inner.connection_made(transport)
        if self.guard.on_change is not None:
            self.guard.on_change()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.in_request and self.deadline is None:
            # Bytes of a next request on a kept-alive connection: its headers get the same time.
            self.deadline = time.monotonic() + self.guard.header_timeout
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.guard.connections.pop(self.transport, None)  # type: ignore[arg-type]
        self.inner.connection_lost(exc)
        if self.guard.on_change is not None:
            self.guard.on_change()

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class ConnectionGuard:
    """Protocol factory wrapper: connection cap and header timeout (see the module docstring)."""

    def __init__(self, opts: dict[str, Any], limits: ClientLimits) -> None:
        self.max_connections = int(opts["max_connections"])
        self.header_timeout = float(opts["header_timeout"])
        self.keepalive_timeout = float(opts["keepalive_timeout"])
        self.limits = limits
        self.connections: dict[asyncio.BaseTransport, _Guarded] = {}
        self.draining = False  # set by drain(): every response from then on closes its connection
        self.on_change: Callable[[], None] | None = None  # told when a connection opens or closes
        self._sweeper: asyncio.Task[None] | None = None
        limits.registry.gauge("pd_proxy_client_connections", "Open client connections (max_connections caps them).",
                              (), collect=lambda: [((), len(self.connections))], merge=True)

    def count(self, reason: str) -> None:
        self.limits.rejected.inc(reason)

    def factory(self, inner_factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, inner_factory())  # type: ignore[return-value]

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self.connections.get(transport) if transport is not None else None
        if conn is not None:
            conn.in_request, conn.deadline = True, None

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self.connections.get(transport) if transport is not None else None
        if conn is not None:
            conn.in_request, conn.deadline = False, None
            conn.idle_since = time.monotonic()

    def sweep(self, now: float) -> int:
        """Close connections whose headers are late; return how many."""
        late = [c for c in self.connections.values()
                if not c.in_request and c.deadline is not None and now >= c.deadline]
        for conn in late:
            self.count("header_timeout")
            conn.deadline = None
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):
                    transport.write(raw_response(408, "Request Timeout",
                                                 f"request headers not received within {self.header_timeout:g}s"))
                transport.close()
        return len(late)

    def close_kept_alive(self, now: float) -> int:
        """Close the lean front's connections idle for keepalive_timeout (aiohttp times out its own)."""
        idle = [c for c in self.connections.values() if getattr(c.inner, "lean_idle", False)
                and not c.in_request and now - c.idle_since >= self.keepalive_timeout]
        for conn in idle:
            conn.inner.close()
        return len(idle)

    def abort_lean(self) -> None:
        """After a drain that timed out: end the lean front's connections still open (aiohttp's runner
        cleanup ends its own)."""
        for conn in list(self.connections.values()):
            if hasattr(conn.inner, "lean_idle") and conn.inner.delegate is None and conn.transport is not None:
                conn.transport.abort()

    def close_idle(self, now: float, grace: float) -> int:
        """Close connections without a request in progress that have been idle for `grace` seconds.

        A connection idle for a moment only may be about to carry the client's next request, and
        closing it then makes that request fail; one idle for a while is not in the client's use.
        """
        idle = [c for c in self.connections.values() if not c.in_request and now - c.idle_since >= grace]
        for conn in idle:
            self.connections.pop(conn.transport, None)  # type: ignore[arg-type]
            close = getattr(conn.inner, "close", None)
            if callable(close):
                close()  # aiohttp's handler: no more requests, then the transport closes
            elif conn.transport is not None:
                conn.transport.close()
        return len(idle)

    async def drain(self, timeout: float, idle_grace: float = 1.0) -> bool:
        """Graceful stop, after the listener closed: answers from now on carry `Connection: close`,
        requests in progress (streams included) run to their end, idle connections close after
        `idle_grace`. True when every connection was gone within `timeout` seconds."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.connections:
            now = time.monotonic()
            if now >= deadline:
                return False
            self.close_idle(now, min(idle_grace, max(0.0, deadline - now - 0.05)))
            await asyncio.sleep(0.05)
        return True

    @staticmethod
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp on_response_prepare hook: while draining, the client learns the connection ends."""
        guard = request.app.get(GUARD_KEY)
        if guard is not None and guard.draining:
            response.force_close()
            response.headers["Connection"] = "close"  # the headers were prepared before this hook

    async def _sweep_loop(self) -> None:
        interval = min(1.0, max(0.05, self.header_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self.sweep(now)
            self.close_kept_alive(now)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None


GUARD_KEY = web.AppKey("pd_guard", ConnectionGuard)  # the app's guard, for on_prepare


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a ConnectionGuard."""

    __slots__ = ("_counts", "_front", "_guard", "_host", "_port", "_reuse_port", "_sock", "bound_port")

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, host: str, port: int,
                 backlog: int = 1024, reuse_port: bool = False, sock: socket.socket | None = None,
                 counts: accept.Counts | None = None,
                 front: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None) -> None:
        super().__init__(runner, backlog=backlog)
        self._guard = guard
        # Wraps aiohttp's handler factory with the lean front (front.py), which serves the generate
        # routes itself and hands every other connection to aiohttp's handler.
        self._front = front
        self._sock = sock  # a listening socket handed down by the master process (master.py)
        self._counts = counts  # with a sock: the workers' shared counts, to accept in balance (accept.py)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port  # several worker processes on one port (SO_REUSEPORT)
        self.bound_port = port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        inner = handler_factory(server)
        factory = self._guard.factory(self._front(inner) if self._front is not None else inner)
        if self._sock is not None and self._counts is not None:
            balanced = accept.BalancedServer(self._sock, factory, self._counts, lambda: len(self._guard.connections))
            self._guard.on_change = balanced.publish
            balanced.start()
            self._server = balanced  # type: ignore[assignment]
        elif self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(factory, self._host, self._port, backlog=self._backlog,
                                                    reuse_address=True, reuse_port=self._reuse_port or None)
        if self._server.sockets:
            self.bound_port = self._server.sockets[0].getsockname()[1]
        self._guard.start()

    async def stop(self) -> None:
        await self._guard.stop()
        await super().stop()


# ----------------------------------------------------------------------------------- request JSON
def depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def check_fields(body: dict[str, Any]) -> tuple[str, str] | None:
    """(param, message) for a field the proxy reads with a wrong type, else None."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream", f"stream must be true or false, got {json.dumps(stream)[:40]}"
    for name, low in (("n", 1), ("max_tokens", 1), ("max_completion_tokens", 1)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return name, f"{name} must be an integer, got {json.dumps(value)[:40]}"
        if value < low:
            return name, f"{name} must be >= {low}, got {value}"
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return "stream_options", "stream_options must be an object"
    return None


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any] | tuple[str, str | None]:
    """The request object, or (message, param) saying why it is refused."""
    try:
        body = codec.loads(raw)  # orjson when installed; deep input falls back to json, which raises RecursionError
    except RecursionError:
        return f"request body nests deeper than {max_depth} levels", None
    except (ValueError, UnicodeDecodeError):
        return "request body is not valid JSON", None
    if not isinstance(body, dict):
        return "request body must be a JSON object", None
    # Nesting needs an opener per level: most bodies (a token-id prompt, a short chat) have fewer
    # openers than the limit in all, and skip the walk (bytes.count runs in C).
    if raw.count(b"[") + raw.count(b"{") > max_depth and depth_exceeds(body, max_depth):
        return f"request body nests deeper than {max_depth} levels", None
    problem = check_fields(body)
    if problem is not None:
        return problem[1], problem[0]
    return body


# ----------------------------------------------------------------------------------- middleware
def _json_error(status: int, message: str, param: str | None = None,
                headers: dict[str, str] | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 404:
        kind = "not_found_error"
    return web.Response(status=status, body=error_json(status, message, kind, param),
                        content_type="application/json", headers=headers)


def middleware(opts: dict[str, Any], guard: ConnectionGuard) -> Callable[..., Awaitable[web.StreamResponse]]:
    max_body = int(opts["max_body_bytes"])
    body_timeout = float(opts["body_timeout"])
    max_depth = int(opts["max_json_depth"])

    @web.middleware
    async def limit(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        transport = request.transport
        guard.request_started(transport)
        try:
            if request.method == "POST" or request.can_read_body:
                length = request.content_length
                if length is not None and length > max_body:
                    guard.count("body_too_large")
                    resp = _json_error(413, f"request body of {length} bytes is over max_body_bytes={max_body}")
                    resp.force_close()
                    return resp
                try:
                    # A body that has fully arrived (most: they fit in one segment) is read without a
                    # timer task; only one still on its way needs the timeout.
                    content = request.content
                    raw = await (request.read() if content.is_eof() else asyncio.wait_for(request.read(), body_timeout))
                except TimeoutError:
                    guard.count("body_timeout")
                    resp = _json_error(408, f"request body not received within {body_timeout:g}s")
                    resp.force_close()
                    return resp
                except web.HTTPRequestEntityTooLarge:
                    guard.count("body_too_large")
                    resp = _json_error(413, f"request body is over max_body_bytes={max_body}")
                    resp.force_close()
                    return resp
                if request.method == "POST" and request.path in GENERATE_PATHS:
                    parsed = parse_body(raw, max_depth)
                    if isinstance(parsed, tuple):
                        guard.count("bad_body")
                        return _json_error(400, parsed[0], parsed[1])
                    request[BODY_KEY] = parsed
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # Router errors (404, 405, ...) in the OpenAI error shape instead of text/plain.
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            message = {404: f"no such endpoint: {request.method} {request.path}",
                       405: f"method {request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
            return _json_error(exc.status, message, headers=headers)
        finally:
            guard.request_finished(transport)

    return limit
