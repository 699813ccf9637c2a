"""A lean HTTP/1.1 client for the proxy's two upstream calls per request (P's POST, D's POST).

The profile under bench/proxy_bench.py put a fifth of the proxy's CPU time in aiohttp's client
(request and response objects, header multidicts, cookie and trace hooks, a timer per chunk) for
requests whose shape never changes: a POST with a JSON body to a backend we know. This client
writes each request as one buffer, parses the status line and headers once, and hands body bytes
out as they arrive (chunked framing removed, nothing re-encoded). Connections are kept per
backend and reused.

What the request flow depends on is kept:
- connect failures raise UpstreamConnectError (the caller counts them towards ejection);
- a read timeout applies to the headers and to every wait for more body (`sock_read` in aiohttp);
- every other failure is an OSError (ConnectionError, TimeoutError), like aiohttp's;
- `close()` aborts the connection, which is how vLLM learns that the request is abandoned.

Idle connections are dropped after IDLE_SECONDS, before uvicorn's 5 s keep-alive timeout, so a
request is never written into a connection the server is closing. A request written into a reused
connection that then closes without a byte of answer is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

IDLE_SECONDS = 4.0          # below uvicorn's (vLLM's) default keep-alive timeout of 5 s
MAX_IDLE_PER_BACKEND = 256  # idle connections kept per backend
HIGH_WATER = 1 << 20        # stop reading from a backend that is this far ahead of the client
MAX_HEAD = 64 * 1024        # status line + headers


class UpstreamConnectError(ConnectionError):
    """The TCP connection to the backend could not be made (refused, unreachable, timed out)."""


class UpstreamProtocolError(ConnectionError):
    """The backend's answer is not HTTP/1.x as expected."""


class Headers(dict[str, str]):
    """Response headers, keys lower-cased; `get` takes any case."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: buffers what the backend sends, wakes the reader."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.exc: BaseException | None = None
        self.paused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def usable(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def take(self, n: int | None = None) -> bytes:
        """Remove and return up to n buffered bytes (all when n is None)."""
        if n is None or n >= len(self.buf):
            out = bytes(self.buf)
            self.buf.clear()
        else:
            out = bytes(self.buf[:n])
            del self.buf[:n]
        if self.paused and len(self.buf) < HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return out

    async def more(self, timeout: float | None) -> None:
        """Wait until more bytes (or EOF) arrive; TimeoutError after `timeout` seconds of silence."""
        if self.eof:
            raise ConnectionResetError("backend closed the connection") from self.exc
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout else None
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def abort(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("backend sent nothing within the read timeout"))


class Response:
    """A backend's answer: status and headers parsed, the body read on demand."""

    def __init__(self, pool: Pool, key: tuple[str, int], conn: _Conn, read_timeout: float | None) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._timeout = read_timeout
        self.status = 0
        self.headers = Headers()
        self._remaining = -1        # Content-Length bytes still to read; -1: chunked or until close
        self._chunked = False
        self._chunk_left = 0        # bytes of the current chunk still to read
        self._done = False
        self._keep_alive = True
        self._finished = False      # released or closed
        self.content = self         # aiohttp's `resp.content.readany()` spelling

    async def _start(self) -> None:
        conn = self._conn
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(conn.buf) > MAX_HEAD:
                raise UpstreamProtocolError("response headers too large")
            await conn.more(self._timeout)
        head = conn.take(end + 4)[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        # isascii(): str.isdigit() also takes "¹", which int() refuses.
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
            raise UpstreamProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        headers = self.headers
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0" or headers.get("connection", "").lower() == "close":
            self._keep_alive = False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise UpstreamProtocolError("bad Content-Length") from None
            if self._remaining == 0:
                self._done = True
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._done = True
        else:
            self._keep_alive = False  # the body ends when the connection does

    async def readany(self) -> bytes:
        """The next body bytes as they arrive; b"" at the end of the body."""
        conn = self._conn
        while not self._done:
            if self._chunked:
                data = self._take_chunks()
                if data or self._done:
                    return data
            elif self._remaining >= 0:
                if conn.buf:
                    data = conn.take(self._remaining)
                    self._remaining -= len(data)
                    self._done = self._remaining == 0
                    return data
            elif conn.buf:
                return conn.take()
            elif conn.eof:
                self._done = True
                return b""
            if conn.eof:
                raise ConnectionResetError("backend closed the connection mid-body") from conn.exc
            await conn.more(self._timeout)
        return b""

    def _take_chunks(self) -> bytes:
        """Decode as many complete chunk pieces as the buffer holds (chunk data may be partial)."""
        conn = self._conn
        buf = conn.buf
        out: list[bytes] = []
        while True:
            if self._chunk_left > 0:
                if not buf:
                    break
                piece = conn.take(self._chunk_left)
                self._chunk_left -= len(piece)
                out.append(piece)
                if self._chunk_left > 0:
                    break
                self._chunk_left = -2  # the CRLF after the data
            if self._chunk_left == -2:
                if len(buf) < 2:
                    break
                del buf[:2]
                self._chunk_left = 0
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > 1024:
                    raise UpstreamProtocolError("chunk size line too long")
                break
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise UpstreamProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)  # "0\r\n", optional trailers, "\r\n"
                if trailer_end < 0:
                    break  # the last CRLF has not arrived yet
                del buf[:trailer_end + 4]
                self._done = True
                break
            del buf[:line_end + 2]
            self._chunk_left = size
        return b"".join(out)

    async def read(self) -> bytes:
        parts = []
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def release(self) -> None:
        """Done with the response: the connection goes back to the pool if the body was read in full."""
        if self._finished:
            return
        self._finished = True
        if self._done and self._keep_alive and self._conn.usable and not self._conn.buf:
            self._pool._put(self._key, self._conn)
        else:
            self._conn.abort()

    def close(self) -> None:
        """Abandon the response: the connection is aborted, so the backend sees the client go."""
        if not self._finished:
            self._finished = True
            self._conn.abort()


class Pool:
    """Keep-alive connections per backend (host, port)."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], deque[_Conn]] = {}
        self._closed = False

    def _get(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        deadline = time.monotonic() - IDLE_SECONDS
        while idle:
            conn = idle.pop()  # the most recently used one is the least likely to be closing
            if conn.usable and conn.idle_since > deadline:
                return conn
            conn.abort()
        return None

    def _put(self, key: tuple[str, int], conn: _Conn) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= MAX_IDLE_PER_BACKEND:
            idle.popleft().abort()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Conn, key[0], key[1]), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"connect to {key[0]}:{key[1]} failed: {exc or type(exc).__name__}") from exc
        return conn

    async def post(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                   read_timeout: float | None) -> Response:
        """POST `body`; return once the status line and headers are in."""
        key = (host, port)
        head = [f"POST {path} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode() + body
        conn = self._get(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(key)
            _send(conn, request)
            resp = Response(self, key, conn, read_timeout)
            try:
                await resp._start()
            except ConnectionResetError:
                if reused and not conn.buf and resp.status == 0:
                    conn.abort()  # a kept connection the backend closed as we used it: once more, fresh
                    conn, reused = None, False
                    continue
                conn.abort()
                raise
            except BaseException:
                conn.abort()
                raise
            return resp

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()
        self._idle.clear()


def _send(conn: _Conn, data: bytes) -> None:
    """One write, one syscall (a function of its own so that profiles show the send apart)."""
    assert conn.transport is not None
    conn.transport.write(data)


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
