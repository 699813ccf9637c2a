"""No stranded KV: clients that leave after prefill, before the decode took the KV.

The decode simulator is slowed (fault delay) so every client is gone while the proxy waits for
D: P has answered and holds the prompt's KV for a decode that will never ask for it. Without
the release, the prefill keeps it until its abort timeout (480 s here); with it, the proxy makes
a decode take it at once.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from proxy_helpers import cluster
from test_proxy_flow import LONG, MODEL, metric

CLIENTS = 500


async def _storm(c, clients: int, clear_decode_faults: bool = True) -> None:
    """`clients` requests; once the prefill holds KV for all of them (D is still sleeping in its
    fault delay), each client closes its connection."""

    async def post(session: aiohttp.ClientSession, i: int) -> None:
        body = {"model": MODEL, "prompt": f"{i} {LONG}", "max_tokens": 8, "stream": bool(i % 2)}
        async with session.post(c.url + "/v1/completions", json=body) as resp:
            await resp.read()

    # One connection per client (the default pool of 100 would queue most of them client-side).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(post(session, i)) for i in range(clients)]
        deadline = time.monotonic() + 60  # a bound for loaded CI machines
        while (await _held(c))[0] < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if clear_decode_faults:
            await c.set_faults(c.decode[0], [])  # the release requests find a prompt decode
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _held(c) -> tuple[int, int]:
    state = await c.sim_state(c.prefill[0])
    return len(state["held_requests"]), state["held_blocks"]


async def _settle(c, timeout: float) -> tuple[int, int, float]:
    """Poll the prefill's held KV until it reaches 0 (or the timeout); (requests, blocks, seconds)."""
    start = time.monotonic()
    held = await _held(c)
    while time.monotonic() - start < timeout and held[0] > 0:
        await asyncio.sleep(0.1)
        held = await _held(c)
    return held[0], held[1], time.monotonic() - start


async def _run(tmp_path, protocol: str, release: bool, clients: int) -> tuple[int, int, float, str]:
    options = {"kv_release": release, "kv_release_concurrency": 256, "kv_release_timeout": 30.0,
               "decode_timeout": 120.0, "max_connections": 4 * clients, "connect_timeout": 10.0}
    async with cluster(tmp_path, protocol, options=options,
                       prefill_sim={"max_num_seqs": 1024, "kv_capacity_blocks": 100_000},
                       decode_sim={"faults": ["delay:90000"], "max_num_seqs": 1024}) as c:
        # Without the release no request needs a prompt decode; and clearing the delay would let D
        # requests still on their way when the clients left take their KV after all (a race that
        # once read 330 of 500 held), which is not what this figure is about.
        await _storm(c, clients, clear_decode_faults=release)
        before = await _held(c)
        assert before[0] > 0.9 * clients, f"the storm did not strand KV: {before}"
        if release:
            held, blocks, seconds = await _settle(c, timeout=40.0)  # returns at 0
        else:
            await asyncio.sleep(2.0)  # what a release would have done by now
            (held, blocks), seconds = await _held(c), 2.0
        text = await c.metrics()
        print(f"\n{protocol} kv_release={release}: {clients} clients left after prefill; prefill held "
              f"{before[0]} requests / {before[1]} blocks just after; {held} / {blocks} {seconds:.1f}s later; "
              f"released={metric(text, 'pd_proxy_kv_released_total', reason='client_disconnect'):.0f}")
        return held, blocks, seconds, text


@pytest.mark.parametrize("protocol", ["mooncake_v1", "nixl", "mooncake"])
async def test_disconnects_after_prefill_leave_no_kv_held(tmp_path, protocol):
    clients = CLIENTS if protocol == "mooncake_v1" else 100
    held, blocks, _, text = await _run(tmp_path, protocol, True, clients)
    assert (held, blocks) == (0, 0)
    assert metric(text, "pd_proxy_kv_released_total", reason="client_disconnect") >= 0.9 * clients
    assert metric(text, "pd_proxy_kv_release_failures_total") == 0, text[-3000:]


async def test_without_release_the_kv_stays_held(tmp_path):
    """The 'before' figure: the same storm with kv_release off strands every prefill's KV."""
    held, blocks, _, text = await _run(tmp_path, "mooncake_v1", False, CLIENTS)
    assert held > 0.9 * CLIENTS and blocks > 0
    assert metric(text, "pd_proxy_kv_released_total") == 0


async def test_release_is_bounded(tmp_path):
    """A release that cannot finish gives up after kv_release_timeout and is counted, not retried."""
    options = {"kv_release_timeout": 0.5, "decode_timeout": 30.0}
    async with cluster(tmp_path, "mooncake_v1", options=options, decode_sim={"faults": ["delay:3000"]}) as c:
        await _storm(c, 5, clear_decode_faults=False)
        deadline = time.monotonic() + 20  # each gives up after 0.5 s; the bound is for loaded machines
        text = await c.metrics()
        while metric(text, "pd_proxy_kv_release_failures_total") < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            text = await c.metrics()
        assert metric(text, "pd_proxy_kv_release_failures_total", reason="timeout") == 5
        assert not c.proxy.kv.tasks
