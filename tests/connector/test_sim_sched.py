"""The timing model: sequence slots, KV capacity, priority order, prefix cache, disconnects."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from openfuyao_pd.sim.engine import CapacityError, Scheduler

PROMPT = " ".join(f"s{i}" for i in range(40))


async def _post(url: str, body: dict, order: list | None = None, tag: object = None):
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/completions", json=body) as resp:
        raw = await resp.read()
    if order is not None:
        order.append(tag)
    return resp.status, json.loads(raw)


async def _state(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url + "/sim/state") as resp:
        return await resp.json()


async def _wait_for(url: str, key: str, value: int) -> None:
    for _ in range(200):
        if (await _state(url))[key] == value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} never reached {value}: {await _state(url)}")


async def test_max_num_seqs_queues(sim_factory):
    sim = await sim_factory("both", "none", max_num_seqs=1, decode_step_ms=10)
    first = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1000}))
    await _wait_for(sim, "running", 1)
    second = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 2}))
    await _wait_for(sim, "waiting", 1)
    first.cancel()
    assert (await second)[0] == 200
    assert (await _state(sim))["running"] == 0


async def test_priority_policy_serves_lower_value_first(sim_factory):
    sim = await sim_factory("both", "none", max_num_seqs=1, decode_step_ms=10, scheduling_policy="priority")
    order: list[str] = []
    blocker = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1000}))  # until cancelled
    await _wait_for(sim, "running", 1)
    low = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1, "priority": 5}, order, "low"))
    await _wait_for(sim, "waiting", 1)
    high = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1, "priority": -1}, order, "high"))
    await _wait_for(sim, "waiting", 2)
    blocker.cancel()  # the client goes away: its slot frees and the queue drains
    await asyncio.gather(low, high)
    assert order == ["high", "low"]


async def test_fcfs_keeps_arrival_order(sim_factory):
    sim = await sim_factory("both", "none", max_num_seqs=1, decode_step_ms=10)
    order: list[str] = []
    blocker = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1000}))  # until cancelled
    await _wait_for(sim, "running", 1)
    tasks = []
    for name in ("a", "b", "c"):
        tasks.append(asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1}, order, name)))
        await _wait_for(sim, "waiting", len(tasks))
    blocker.cancel()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]


async def test_prefix_cache_reports_cached_tokens(sim_factory):
    sim = await sim_factory("both", "none")
    _, first = await _post(sim, {"prompt": PROMPT, "max_tokens": 1})
    _, again = await _post(sim, {"prompt": PROMPT + " tail words", "max_tokens": 1})
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 32  # two full blocks of 16
    off = await sim_factory("both", "none", enable_prefix_caching=False)
    await _post(off, {"prompt": PROMPT, "max_tokens": 1})
    _, again = await _post(off, {"prompt": PROMPT, "max_tokens": 1})
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_kv_capacity_queues_and_rejects(sim_factory):
    sim = await sim_factory("both", "none", kv_capacity_blocks=4, decode_step_ms=500)
    status, body = await _post(sim, {"prompt": PROMPT, "max_tokens": 40})  # 80 tokens = 5 blocks
    assert status == 400 and "KV blocks" in body["message"]
    first = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True}))  # 3 blocks
    await _wait_for(sim, "running", 1)
    second = asyncio.create_task(_post(sim, {"prompt": PROMPT, "max_tokens": 1}))  # 3 blocks too
    await _wait_for(sim, "waiting", 1)  # a slot is free but the blocks are not
    first.cancel()
    assert (await second)[0] == 200


async def test_held_kv_counts_against_capacity(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1", kv_capacity_blocks=4)
    ktp = {"do_remote_decode": True}
    status, body = await _post(p, {"prompt": PROMPT, "max_tokens": 1, "kv_transfer_params": ktp})
    assert status == 200 and body["kv_transfer_params"]
    assert (await _state(p))["held_blocks"] == 3
    second = asyncio.create_task(_post(p, {"prompt": PROMPT, "max_tokens": 1, "kv_transfer_params": ktp}))
    await _wait_for(p, "waiting", 1)  # leaked KV starves the prefill: what a proxy test must catch
    key = body["kv_transfer_params"]["remote_request_id"]
    done_url = f"http://127.0.0.1:{p.ports['side']}/sim/kv/{key}/done"
    async with aiohttp.ClientSession() as session, session.post(done_url) as resp:
        assert resp.status == 200
    assert (await second)[0] == 200


async def test_client_disconnect_aborts_and_frees(sim_factory):
    sim = await sim_factory("both", "none", decode_step_ms=20)
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
            await session.post(sim + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 100})
    await _wait_for(sim, "running", 0)
    state = await _state(sim)
    assert state["used_blocks"] == 0


def test_decode_step_grows_with_batch():
    from openfuyao_pd.sim.config import SimConfig
    from openfuyao_pd.sim.server import SimEngine

    engine = SimEngine(SimConfig(decode_step_ms=10, decode_step_growth=0.5, mooncake="off"))
    engine.scheduler.running = 1
    single = engine.step_seconds()
    engine.scheduler.running = 5
    assert single == pytest.approx(0.010)
    assert engine.step_seconds() == pytest.approx(0.010 * 3)


async def test_scheduler_rejects_what_can_never_fit():
    scheduler = Scheduler(max_seqs=2, capacity_blocks=10, policy="fcfs")
    with pytest.raises(CapacityError):
        await scheduler.admit(11)
    await scheduler.admit(10)
    assert scheduler.free_blocks == 0
    scheduler.release(10)
    assert scheduler.running == 0 and scheduler.free_blocks == 10


async def test_concurrent_prefills_share_the_engine(sim_factory):
    """Prefill chunks run one at a time: a third concurrent prompt waits for the lane."""
    sim = await sim_factory("both", "none", prefill_ms_per_token=5, max_num_batched_tokens=16)
    tasks = [asyncio.create_task(_post(sim, {"prompt": f"{i} {PROMPT}", "max_tokens": 1})) for i in range(3)]
    seen = 0
    for _ in range(300):
        state = await _state(sim)
        seen = max(seen, state["prefill_waiting"])
        if seen == 2 or all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.005)
    assert seen == 2
    assert [(await t)[0] for t in tasks] == [200, 200, 200]
    state = await _state(sim)
    assert state["prefill_busy"] is False and state["prefill_waiting"] == 0


async def test_priority_orders_prefill_chunks():
    from openfuyao_pd.sim.engine import ComputeLane

    lane = ComputeLane("priority")
    order: list[str] = []

    async def job(name: str, priority: int) -> None:
        await lane.run(0.01, priority)
        order.append(name)

    first = asyncio.create_task(job("first", 0))
    await asyncio.sleep(0)
    late_low = asyncio.create_task(job("low", 9))
    await asyncio.sleep(0)
    late_high = asyncio.create_task(job("high", -1))
    await asyncio.gather(first, late_low, late_high)
    assert order == ["first", "high", "low"]
    assert lane.busy is False


async def test_cancelled_prefill_releases_the_lane():
    from openfuyao_pd.sim.engine import ComputeLane

    lane = ComputeLane("fcfs")
    holder = asyncio.create_task(lane.run(10))
    await asyncio.sleep(0)
    queued = asyncio.create_task(lane.run(10))
    await asyncio.sleep(0)
    assert lane.waiting == 1
    queued.cancel()
    holder.cancel()
    await asyncio.gather(holder, queued, return_exceptions=True)
    assert lane.busy is False and lane.waiting == 0
    await asyncio.wait_for(lane.run(0), 1)


async def test_decode_steps_wait_for_a_running_prefill_chunk():
    from openfuyao_pd.sim.engine import ComputeLane

    lane = ComputeLane("fcfs")
    await lane.join_step()  # idle: no wait
    chunk = asyncio.create_task(lane.run(60))
    await asyncio.sleep(0)
    step = asyncio.create_task(lane.join_step())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not step.done()  # the decode token is held by the prefill chunk in its batch
    chunk.cancel()  # the chunk ends (however it ends), and so does the step
    await asyncio.wait_for(step, 1)
    assert lane.busy is False
