"""Balanced accepting: the workers of one master share one listening socket, and a worker accepts
only while it holds no more client connections than the least loaded accepting worker plus SLACK.

Why not SO_REUSEPORT's spreading: it hashes each connection's addresses onto one socket per
worker, so a few long-lived connections (a gateway's or a load generator's keep-alive pool) land
unevenly; 64 connections over 8 sockets came out anywhere from 2 to 17 per worker, and the worker
holding 17 set the proxy's tail latency and throughput. Why not a plain shared socket either: the
first worker to wake accepts everything queued (63 of 64 in a test). Here every worker waits on
the same socket, takes one connection at a time, publishes its count in the shared state
(shared.py, one cell per worker, single writer) and stops waiting while it is over the bar. The
least loaded accepting worker is never over it, so a connection always has a taker; and when a
connection has waited in the queue for MAX_HELD while a worker was held back, that worker takes
it, so a worker that died with a low count in its row (until the master clears the row) or that
is stuck cannot stall the others.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Protocol

LOG = logging.getLogger("openfuyao_pd.proxy")
SLACK = 1            # a worker may hold this many connections more than the least loaded one
POLL = 0.005         # how often a held-back worker looks again (s)
MAX_HELD = 0.5       # a connection queued this long is taken by a held-back worker too (s)
ERROR_PAUSE = 0.05   # after an accept error (EMFILE, ECONNABORTED): wait, then go on


class Counts(Protocol):
    """The shared view of the workers' connection counts (shared.State)."""

    def set_connections(self, count: int) -> None: ...

    def fewest_connections(self) -> int | None: ...


def may_accept(mine: int, fewest: int | None, slack: int = SLACK) -> bool:
    """True when a worker holding `mine` connections should take the next one."""
    return fewest is None or mine <= fewest + slack


def _queued(sock: socket.socket) -> bool:
    """True when a connection waits in the socket's accept queue."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


class BalancedServer:
    """What aiohttp's site keeps as its server (it uses `sockets` and `close()`): an accept loop on a
    shared socket, gated by counts."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol], counts: Counts,
                 open_connections: Callable[[], int]) -> None:
        sock.setblocking(False)
        self.sockets = [sock]
        self._sock = sock
        self._factory = factory
        self._counts = counts
        self._open = open_connections
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._counts.set_connections(self._open())
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def publish(self) -> None:
        """Called when a connection opens or closes, so the others see this worker's count."""
        if self._task is not None:
            self._counts.set_connections(self._open())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        waiting_since: float | None = None  # held back while a connection waited in the queue
        while True:
            mine = self._open()
            self._counts.set_connections(mine)  # publish() keeps it current between accepts too
            if not may_accept(mine, self._counts.fewest_connections()):
                if not _queued(self._sock):
                    waiting_since = None
                elif waiting_since is None:
                    waiting_since = time.monotonic()
                if waiting_since is None or time.monotonic() - waiting_since < MAX_HELD:
                    await asyncio.sleep(POLL)
                    continue
            waiting_since = None
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                LOG.warning("accept failed: %s", exc)
                await asyncio.sleep(ERROR_PAUSE)
                continue
            try:
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.connect_accepted_socket(self._factory, conn)
            except OSError as exc:  # the client left between accept and setup
                LOG.debug("accepted connection lost at setup: %s", exc)
                conn.close()

    def close(self) -> None:
        """Stop accepting and close this worker's copy of the socket (the master and the other
        workers keep theirs, so connections queued on it are not lost)."""
        self._counts.set_connections(-1)
        task, self._task = self._task, None
        if task is None:
            self._sock.close()
            return
        task.cancel()
        task.add_done_callback(lambda _: self._sock.close())  # once the loop no longer waits on it
