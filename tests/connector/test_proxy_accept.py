"""Balanced accepting (proxy/accept.py): the workers share one listening socket, and a worker takes
a connection only while it holds no more than the least loaded accepting worker plus one.

SO_REUSEPORT's hash, which this replaced, spread 24 kept-alive connections over 4 workers as
unevenly as 2 to 10; the spread is a property of the addresses, not of the load, so the check
below holds the connections open and asks each which worker serves it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
from typing import Any

import pytest
from openfuyao_pd.proxy import accept, shared
from test_proxy_reload import master, wait_until


@pytest.mark.parametrize(("mine", "fewest", "expected"), [
    (0, None, True),   # nobody else accepts
    (0, 0, True),
    (1, 0, True),      # one over the least loaded: still takes the next one
    (2, 0, False),
    (9, 8, True),
    (10, 8, False),
])
def test_may_accept(mine: int, fewest: int | None, expected: bool) -> None:
    assert accept.may_accept(mine, fewest) is expected


def test_fewest_connections_counts_only_workers_that_accept() -> None:
    state = shared.State.create()
    try:
        rows = [state.claim_row(1000 + i) for i in range(3)]
        assert state.fewest_connections() is None  # claimed rows do not accept until their worker says so
        views = [shared.State(state.dir, row) for row in rows]
        views[0].set_connections(5)
        views[1].set_connections(2)
        assert state.fewest_connections() == 2
        views[1].set_connections(-1)  # draining: no longer in the balance
        assert state.fewest_connections() == 5
        views[2].set_connections(0)
        state.free_row(rows[2])  # its worker exited: the master cleared its row
        assert state.fewest_connections() == 5
        for view in views:
            view.close()
    finally:
        state.remove()


class _Counts:
    """One process's stand-in for the shared table: a dict of worker -> count."""

    def __init__(self, table: dict[str, int], me: str) -> None:
        self.table, self.me = table, me

    def set_connections(self, count: int) -> None:
        self.table[self.me] = count

    def fewest_connections(self) -> int | None:
        live = [c for c in self.table.values() if c >= 0]
        return min(live) if live else None


class _Hold(asyncio.Protocol):
    opened: list[str]

    def __init__(self, name: str, opened: dict[str, int]) -> None:
        self.name, self.opened_by = name, opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.opened_by[self.name] += 1


async def test_two_servers_on_one_socket_take_turns_and_a_closed_one_leaves_the_balance() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    table: dict[str, int] = {}
    opened: dict[str, int] = collections.Counter()
    servers = {name: accept.BalancedServer(listener.dup(), lambda n=name: _Hold(n, opened),
                                           _Counts(table, name), lambda n=name: opened[n])
               for name in ("a", "b")}
    for server in servers.values():
        server.start()
    clients = []
    try:
        for _ in range(10):
            clients.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.02)
        assert sum(opened.values()) == 10 and abs(opened["a"] - opened["b"]) <= 2, opened
        before = dict(opened)
        servers["a"].close()
        assert table["a"] == -1
        for _ in range(3):
            clients.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.02)
        # A closed server takes none, and its count no longer holds the other back.
        assert opened == {"a": before["a"], "b": before["b"] + 3}, opened
    finally:
        for server in servers.values():
            server.close()
        for _, writer in clients:
            writer.close()
        listener.close()


async def _which_worker(port: int) -> tuple[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open a connection, ask /health over it (kept alive) and return the answering worker's pid."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    body: dict[str, Any] = json.loads(await reader.readexactly(length))
    return body["pid"], (reader, writer)


def _async(check: Any) -> Any:
    async def run() -> bool:
        return check()
    return run


async def test_kept_alive_connections_spread_evenly_over_the_workers(tmp_path) -> None:
    async with master(tmp_path, {"workers": 4}) as (m, _):
        await wait_until(_async(lambda: bool(m.log_events("master_ready"))), 30, "all four workers listening")
        held = []
        per_worker: collections.Counter[int] = collections.Counter()
        try:
            for _ in range(24):
                pid, conn = await _which_worker(int(m.url.rsplit(":", 1)[1]))
                per_worker[pid] += 1
                held.append(conn)
        finally:
            for _, writer in held:
                writer.close()
        assert len(per_worker) == 4, per_worker
        assert max(per_worker.values()) - min(per_worker.values()) <= 2, per_worker
