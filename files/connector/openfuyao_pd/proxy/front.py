"""The lean HTTP/1.1 front: the two generate routes served without aiohttp's server objects.

Under bench/proxy_bench.py the profile put a fifth of the proxy's CPU time in aiohttp's server
side (a request object, header multidicts, the router, middlewares, a response object and its
header serialisation, per request) for a request whose shape never changes. The front parses
the request head once, hands the body to the request flow, and writes the answer as one buffer
(a stream as HTTP/1.1 chunks).

It serves a request itself only in the common, unambiguous case:
`POST /v1/completions` or `POST /v1/chat/completions`, HTTP/1.1, a Content-Length body of at most
max_body_bytes, no Transfer-Encoding, Expect or Upgrade header, header lines without control
characters or folding. Anything else (another route, a malformed or unusual request, an over-long
head) hands the connection, with every byte read so far, to aiohttp's connection handler, which
keeps it from then on. So every other route, limit and error answer stays aiohttp's, and the
front never has to judge a request it does not understand.

What aiohttp did for these routes and the front does the same way: the body timeout (408) and
the body checks (limits.parse_body: 400), `Connection: close` while draining, the handler
cancelled when the client goes away (vLLM then sees its upstream connection close), backpressure
on streams, keep-alive with an idle timeout (ConnectionGuard's sweep), the header timeout and the
connection cap (ConnectionGuard, around this protocol).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from openfuyao_pd.proxy.limits import ConnectionGuard, error_json, parse_body
from openfuyao_pd.proxy.reply import Answer, Stream

LOG = logging.getLogger("openfuyao_pd.proxy")
# aiohttp's own line limit: a longer head is aiohttp's to judge (and refuse).
MAX_HEAD = 8190
GENERATE = {b"/v1/completions": False, b"/v1/chat/completions": True}  # path -> chat
REASONS = {s.value: s.phrase for s in HTTPStatus}
# Control characters other than tab, and a CR or LF that is not part of a CRLF line end.
_BAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_HANDED_OFF_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
EAGER = sys.version_info >= (3, 12)


@dataclass(frozen=True, slots=True)
class Head:
    """A generate request's head, as far as the proxy reads it."""

    path: str
    chat: bool
    length: int
    request_id: str | None
    auth: str | None
    close: bool  # the client asked for Connection: close


def parse_head(raw: bytes) -> Head | None:
    """The head (request line and headers, without the blank line) of a request the front serves;
    None for any other request, which aiohttp then serves or refuses."""
    if _BAD_BYTES.search(raw):
        return None
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    chat = GENERATE.get(parts[1])
    if chat is None:
        return None
    length: int | None = None
    request_id = auth = None
    close = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[:1] in b" \t" or name[-1:] in b" \t":
            return None  # not a header line, folding, or space before the colon
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name in _HANDED_OFF_HEADERS:
            return None
        elif name == b"connection":
            close = b"close" in value.lower()
        elif name == b"x-request-id" and request_id is None:
            request_id = value.decode("latin-1")
        elif name == b"authorization" and auth is None:
            auth = value.decode("latin-1")
    if length is None:
        return None
    return Head(parts[1].decode(), chat, length, request_id, auth, close)


def _start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run a request's task eagerly where Python can (3.12+): up to its first wait it runs now,
    inside data_received, instead of one event-loop iteration later."""
    loop = asyncio.get_running_loop()
    if EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    return loop.create_task(coro)


_DATE = [0, ""]


def http_date() -> str:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[0], _DATE[1] = now, email.utils.formatdate(now, usegmt=True)
    return _DATE[1]


def head_bytes(status: int, headers: dict[str, str], framing: str, close: bool) -> bytes:
    """Status line and headers of an answer; `framing` is its Content-Length or Transfer-Encoding line."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    lines.append(f"{framing}\r\nDate: {http_date()}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class FrontApp:
    """What every front connection of a worker shares: the proxy, its guard and its limits."""

    def __init__(self, proxy: Any, guard: ConnectionGuard, opts: dict[str, Any]) -> None:
        self.proxy = proxy  # server.Proxy: .generate(reply, path, chat, body, request_id, auth)
        self.guard = guard
        self.max_body = int(opts["max_body_bytes"])
        self.body_timeout = float(opts["body_timeout"])
        self.max_depth = int(opts["max_json_depth"])
        # Pipelined bytes kept while a request is served; beyond this, reading pauses.
        self.max_buffer = self.max_body + MAX_HEAD


class Front(asyncio.Protocol):
    """One client connection: serves generate requests itself, hands anything else to aiohttp.

    It is also the flow's Reply (`stream`) and the Stream it returns (`write`, `write_eof`), so
    a request costs no objects of its own beyond its head and its task.
    """

    def __init__(self, app: FrontApp, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.app = app
        self.fallback = fallback  # aiohttp's connection handler factory
        self.delegate: Any = None  # aiohttp's handler, once the connection is handed to it
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: tuple[int, Head] | None = None  # (head end, head) of a request whose body is on its way
        self.busy = False  # a request is in progress (its answer not yet written)
        self.task: asyncio.Task[None] | None = None  # that request, while it waits on something
        self.body_timer: asyncio.TimerHandle | None = None
        self.lost = False
        self.closing = False  # close once the request in progress is answered
        self.close_after = False  # the answer being written ends the connection
        self.started = False  # the answer's head is out
        self.ended = False  # a streamed answer's last chunk is out
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)
            return
        self.buf += data
        if not self.busy:
            self._next()
        elif len(self.buf) > self.app.max_buffer and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.delegate is not None:
            return self.delegate.eof_received()
        return None  # like aiohttp: the transport closes, connection_lost cancels the request

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
            return
        self.lost = True
        self._cancel_body_timer()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # aiohttp's handler_cancellation: the flow aborts the upstream calls
        self._wake_writer()

    def pause_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.pause_writing()
        else:
            self.writing_paused = True

    def resume_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.resume_writing()
        else:
            self.writing_paused = False
            self._wake_writer()

    # ------------------------------------------------------------------------ for ConnectionGuard
    @property
    def lean_idle(self) -> bool:
        """Kept alive with no request in progress (the guard closes it after keepalive_timeout)."""
        return self.delegate is None and not self.busy and self.waiting is None

    def close(self) -> None:
        """No more requests: close now if idle, else once the answer in progress is out."""
        if self.delegate is not None:
            self.delegate.close()
            return
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------------ requests
    def _next(self) -> None:
        """With no request in progress: start the next one once its head and body are in."""
        buf = self.buf
        if self.waiting is not None:
            end, head = self.waiting
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._hand_off()
                return
            parsed = parse_head(bytes(buf[:end])) if end <= MAX_HEAD else None
            if parsed is None or parsed.length > self.app.max_body:
                self._hand_off()
                return
            head = parsed
        total = end + 4 + head.length
        if len(buf) < total:
            if self.waiting is None:  # the headers are in: the body timeout runs from now
                self.waiting = (end, head)
                self.app.guard.request_started(self.transport)
                self.body_timer = asyncio.get_running_loop().call_later(self.app.body_timeout, self._body_late)
            return
        self.waiting = None
        self._cancel_body_timer()
        body = bytes(buf[end + 4:total])
        del buf[:total]
        self.app.guard.request_started(self.transport)
        self.started = self.ended = False
        self.close_after = head.close or self.closing or self.app.guard.draining
        self.busy = True
        task = _start(self._serve(head, body))
        if not task.done():  # done already: answered at once, and _done() may have started the next one
            self.task = task

    async def _serve(self, head: Head, raw: bytes) -> None:
        app = self.app
        try:
            parsed = parse_body(raw, app.max_depth)
            if isinstance(parsed, tuple):
                app.guard.count("bad_body")
                self._answer(Answer(400, error_json(400, parsed[0], "invalid_request_error", parsed[1]),
                                    {"Content-Type": "application/json"}))
                return
            result = await app.proxy.generate(self, head.path, head.chat, parsed, head.request_id, head.auth)
            if isinstance(result, Answer) and not self.started:
                self._answer(result)
            elif not self.ended and self.transport is not None:
                self.transport.abort()  # an answer cut short: the client must not wait for the rest
        except asyncio.CancelledError:
            pass  # the client went away (connection_lost): the flow has counted it
        except Exception:  # a bug of ours: no answer can be trusted, end the connection
            LOG.exception("lean front: request on %s failed", head.path)
            if self.transport is not None:
                self.transport.abort()
        finally:
            self._done()

    def _done(self) -> None:
        self.busy, self.task = False, None
        self.app.guard.request_finished(self.transport)
        if self.lost or self.transport is None:
            return
        if self.close_after or self.closing:
            self.transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buf:
            # Pipelined requests: the next one starts from the loop, not from here, so that answers
            # given at once (eager tasks) never nest one request's start inside another's end.
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if not self.busy and not self.lost and self.delegate is None and self.buf:
            self._next()

    def _answer(self, answer: Answer) -> None:
        if self.lost or self.transport is None:
            return
        self.started = True
        head = head_bytes(answer.status, answer.headers, f"Content-Length: {len(answer.body)}", self.close_after)
        self.transport.write(head + answer.body)

    def _body_late(self) -> None:
        self.body_timer = self.waiting = None
        guard = self.app.guard
        guard.count("body_timeout")
        guard.request_finished(self.transport)
        message = f"request body not received within {self.app.body_timeout:g}s"
        body = error_json(408, message, "invalid_request_error")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head_bytes(408, {"Content-Type": "application/json"},
                                            f"Content-Length: {len(body)}", True) + body)
            self.transport.close()

    def _cancel_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting with the bytes read so far."""
        inner = self.delegate = self.fallback()
        inner.connection_made(self.transport)
        if self.writing_paused:
            inner.pause_writing()
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        data = bytes(self.buf)
        self.buf.clear()
        if data:
            inner.data_received(data)

    # ------------------------------------------------------------------------ Reply and Stream
    async def stream(self, headers: dict[str, str]) -> Stream:
        if self.lost or self.transport is None:
            raise ConnectionResetError("the client went away")
        self.started = True
        self.transport.write(head_bytes(200, headers, "Transfer-Encoding: chunked", self.close_after))
        return self

    async def write(self, data: bytes) -> None:
        if self.lost or self.transport is None:
            raise ConnectionResetError("the client went away")
        if not data:
            return  # an empty chunk would end the stream
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if self.writing_paused:
            await self._drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            await self.write(data)
        if self.lost or self.transport is None:
            raise ConnectionResetError("the client went away")
        self.transport.write(b"0\r\n\r\n")
        self.ended = True

    async def _drain(self) -> None:
        while self.writing_paused and not self.lost:
            waiter = self.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.drain_waiter = None
        if self.lost:
            raise ConnectionResetError("the client went away")

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
