"""Fault injection, at start-up and at run time, as the proxy tests use it."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

PROMPT = " ".join(f"f{i}" for i in range(20))
PREFILL_KTP = {"do_remote_decode": True, "do_remote_prefill": False}


async def _post(url: str, body: dict, timeout: float = 10.0):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.post(url + "/v1/completions", json=body) as resp:
        return resp.status, await resp.read()


async def _state(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url + "/sim/state") as resp:
        return await resp.json()


async def _set_faults(url: str, faults: list) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(url + "/sim/faults", json={"faults": faults}) as r:
        return r.status, await r.json()


async def test_fail_at_start_and_cleared_at_run_time(sim_factory):
    sim = await sim_factory("both", "none", faults=["fail"])
    status, raw = await _post(sim, {"prompt": PROMPT})
    assert status == 500 and json.loads(raw)["type"] == "InternalServerError"
    assert await _set_faults(sim, []) == (200, {"faults": []})
    status, _ = await _post(sim, {"prompt": PROMPT})
    assert status == 200
    status, body = await _set_faults(sim, ["explode"])
    assert status == 400 and "unknown fault 'explode'" in body["message"]
    status, body = await _set_faults(sim, ["fail-rate:2"])
    assert status == 400


async def test_delay(sim_factory):
    sim = await sim_factory("both", "none")
    await _set_faults(sim, ["delay:300"])
    start = time.monotonic()
    status, _ = await _post(sim, {"prompt": PROMPT, "max_tokens": 1})
    assert status == 200 and time.monotonic() - start >= 0.3


async def test_no_params_fault_on_prefill(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1", faults=["no-params"])
    status, raw = await _post(p, {"prompt": PROMPT, "max_tokens": 1, "kv_transfer_params": PREFILL_KTP})
    assert status == 200 and json.loads(raw)["kv_transfer_params"] is None
    assert (await _state(p))["held_blocks"] == 0


async def test_error_mid_stream_drops_the_connection(sim_factory):
    sim = await sim_factory("both", "none", faults=["error-mid-stream:2"])
    chunks = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(sim + "/v1/completions",
                                    json={"prompt": PROMPT, "max_tokens": 8, "stream": True}) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        chunks.append(line)
    assert len(chunks) == 2 and not any(b"[DONE]" in c for c in chunks)
    state = await _state(sim)
    assert state["running"] == 0 and state["used_blocks"] == 0
    # non-streaming: the connection closes without an answer
    with pytest.raises(aiohttp.ClientError):
        await _post(sim, {"prompt": PROMPT, "max_tokens": 8})


async def test_die_after_closes_the_server_in_process(sim_factory):
    sim = await sim_factory("both", "none", faults=["die-after:2"])
    assert (await _post(sim, {"prompt": PROMPT}))[0] == 200
    assert (await _post(sim, {"prompt": PROMPT}))[0] == 200
    with pytest.raises(aiohttp.ClientError):
        await _post(sim, {"prompt": PROMPT})
    await asyncio.sleep(0.1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _post(sim, {"prompt": PROMPT})


async def test_die_kills_in_flight_streams(sim_factory):
    sim = await sim_factory("both", "none", decode_step_ms=20)
    received = 0
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(sim + "/v1/completions",
                                    json={"prompt": PROMPT, "max_tokens": 200, "stream": True}) as resp:
                async for line in resp.content:
                    received += line.startswith(b"data: ")
                    if received == 1:
                        async with session.post(sim + "/sim/die") as die:
                            assert die.status == 200
    assert 1 <= received < 200


async def test_die_after_exits_the_cli_process(sim_process_factory):
    url, proc = await sim_process_factory("serve", "m", "--sim-fault", "die-after:1")
    assert (await _post(url, {"prompt": PROMPT}))[0] == 200
    with pytest.raises(aiohttp.ClientError):
        await _post(url, {"prompt": PROMPT})
    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10) == 1


async def test_fail_rate_is_reproducible(sim_factory):
    a = await sim_factory("both", "none", faults=["fail-rate:0.5"], seed=3)
    b = await sim_factory("both", "none", faults=["fail-rate:0.5"], seed=3)
    runs = [[(await _post(s, {"prompt": PROMPT, "max_tokens": 1}))[0] for _ in range(16)] for s in (a, b)]
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


async def test_unhealthy_and_hang(sim_factory):
    sim = await sim_factory("both", "none")
    await _set_faults(sim, ["unhealthy", "hang"])
    async with aiohttp.ClientSession() as session, session.get(sim + "/health") as resp:
        assert resp.status == 503
    with pytest.raises(asyncio.TimeoutError):
        await _post(sim, {"prompt": PROMPT}, timeout=0.3)
    await asyncio.sleep(0.1)
    state = await _state(sim)
    assert state["running"] == 0 and state["waiting"] == 0
