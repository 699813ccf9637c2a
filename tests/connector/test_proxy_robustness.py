"""Failure handling against the simulator: health, retries, fallbacks, streams, disconnects, instance API, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from openfuyao_pd.sim.config import SimConfig
from openfuyao_pd.sim.server import SimRunner, free_port
from proxy_helpers import cluster, spawn_sim
from test_proxy_flow import LONG, MODEL, metric, seen, sim_metrics

BODY = {"model": MODEL, "prompt": LONG, "max_tokens": 4}


async def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def all_zero(c) -> bool:
    return all(v == (0, 0) for v in c.counters().values())


# ------------------------------------------------------------------------------------- health
async def test_active_health_checks_eject_and_readmit(tmp_path):
    async with cluster(tmp_path, "centralized", 1, 2, options={"health_failures": 2, "health_successes": 2}) as c:
        await c.set_faults(c.decode[1], ["unhealthy"])
        await wait_for(lambda: c.backend("decode-1").ejected)
        async with c.session.get(c.url + "/v1/instances") as resp:
            listing = {i["name"]: i for i in (await resp.json())["instances"]}
        assert listing["decode-1"]["ejected"] and not listing["decode-1"]["healthy"]
        assert listing["decode-0"]["healthy"] and listing["prefill-0"]["role"] == "prefill"
        before = seen(c.decode)
        for i in range(4):
            assert (await c.post({**BODY, "prompt": f"{i}{LONG}"}))[0] == 200
        assert seen(c.decode)[1] == before[1]  # nothing routed to the ejected one
        text = await c.metrics()
        assert metric(text, "pd_proxy_backend_healthy", backend="decode-1") == 0
        assert metric(text, "pd_proxy_backend_ejections_total", backend="decode-1") == 1
        await c.set_faults(c.decode[1], [])
        await wait_for(lambda: not c.backend("decode-1").ejected)
        assert metric(await c.metrics(), "pd_proxy_backend_healthy", backend="decode-1") == 1


async def test_health_endpoint_reports_why(tmp_path):
    async with cluster(tmp_path, "mooncake_v1", 1, 1) as c:
        await c.set_faults(c.prefill[0], ["unhealthy"])
        await wait_for(lambda: c.backend("prefill-0").ejected)
        async with c.session.get(c.url + "/health") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "degraded" and "no healthy prefill" in body["reason"]
        # With no prefill left, requests prefill on decode (counted), not fail.
        assert (await c.post(BODY))[0] == 200
        assert metric(await c.metrics(), "pd_proxy_route_decisions_total", decision="local", reason="no_prefill") == 1
        await c.set_faults(c.decode[0], ["unhealthy"])
        await wait_for(lambda: c.backend("decode-0").ejected)
        async with c.session.get(c.url + "/health") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["reason"] == "no healthy decode instance"
        status, data, _ = await c.post(BODY)
        assert status == 503 and "no healthy decode backend" in data["error"]["message"]


# ------------------------------------------------------------------------------------- retries and fallbacks
async def test_failed_prefill_retries_on_another_prefill(tmp_path):
    async with cluster(tmp_path, "mooncake_v1", 2, 1, options={"routing": "round_robin"},
                       prefill_sim={"faults": []}) as c:
        await c.set_faults(c.prefill[0], ["fail"])
        for i in range(2):
            status, data, _ = await c.post({**BODY, "prompt": f"{i}{LONG}"})
            assert status == 200, data
        text = await c.metrics()
        assert metric(text, "pd_proxy_retries_total", stage="prefill") >= 1
        assert metric(await sim_metrics(c, c.decode[0]), "pd_sim_kv_loads_total", source="remote") == 2


async def test_failed_prefill_falls_back_to_local_prefill(tmp_path):
    async with cluster(tmp_path, "nixl", 1, 1, prefill_sim={"faults": ["fail"]}) as c:
        status, events = await c.stream(BODY)
        assert status == 200 and events[-1] == "[DONE]"
        text = await c.metrics()
        assert metric(text, "pd_proxy_fallbacks_total", reason="prefill_failed") == 1
        assert metric(text, "pd_proxy_requests_total", route="local", outcome="success") == 1
        d = await sim_metrics(c, c.decode[0])
        assert metric(d, "pd_sim_kv_loads_total", source="local", reason="no-kv-params") == 1


async def test_prefill_read_timeout_falls_back(tmp_path):
    async with cluster(tmp_path, "mooncake_v1", 1, 1, options={"prefill_timeout": 0.3},
                       prefill_sim={"faults": ["hang"]}) as c:
        status, data, _ = await c.post(BODY)
        assert status == 200, data
        assert metric(await c.metrics(), "pd_proxy_fallbacks_total", reason="prefill_failed") == 1
        assert all_zero(c)


async def test_failed_decode_retries_with_a_fresh_prefill(tmp_path):
    async with cluster(tmp_path, "mooncake_v1", 1, 2, options={"routing": "round_robin"}) as c:
        await c.set_faults(c.decode[0], ["fail"])
        for i in range(2):
            status, events = await c.stream({**BODY, "prompt": f"{i}{LONG}"})
            assert status == 200 and events[-1] == "[DONE]" and "error" not in events[-2]
        text = await c.metrics()
        retries = metric(text, "pd_proxy_retries_total", stage="decode")
        assert retries >= 1
        # Every retry re-ran prefill (consumed params are never resent), and D1 got P's KV each time.
        assert seen(c.prefill) == [2 + retries]
        # D0 failed before taking P's KV: the proxy had D1 take it (1-token request) instead of leaving it held.
        await wait_for(lambda: not c.proxy.kv.tasks)
        released = metric(await c.metrics(), "pd_proxy_kv_released_total", reason="decode_failed")
        assert released == retries
        assert metric(await sim_metrics(c, c.decode[1]), "pd_sim_kv_loads_total", source="remote") == 2 + released
        assert (await c.sim_state(c.prefill[0]))["held_blocks"] == 0


async def test_upstream_4xx_is_passed_through(tmp_path):
    async with cluster(tmp_path, "mooncake_v1") as c:
        status, data, _ = await c.post({**BODY, "max_tokens": 100000})
        assert status == 400 and "maximum context length" in data["error"]["message"]
        status, data, _ = await c.post({**BODY, "model": "nope"})
        assert status == 404 and "does not exist" in data["error"]["message"]
        assert metric(await c.metrics(), "pd_proxy_requests_total", outcome="client_error") == 2
        assert metric(await c.metrics(), "pd_proxy_retries_total") == 0


async def test_error_mid_stream_ends_with_error_event(tmp_path):
    async with cluster(tmp_path, "nixl", 1, 1, decode_sim={"faults": ["error-mid-stream:3"]}) as c:
        status, events = await c.stream({**BODY, "max_tokens": 10})
        assert status == 200
        assert events[-1] == "[DONE]" and "error" in events[-2] and "decode-0" in events[-2]["error"]["message"]
        assert len([e for e in events if isinstance(e, dict) and e.get("choices")]) == 3  # the tokens before it
        text = await c.metrics()
        assert metric(text, "pd_proxy_requests_total", outcome="stream_error") == 1
        assert metric(text, "pd_proxy_stream_errors_total", backend="decode-0") == 1
        # Non-streaming: nothing was sent yet, so the proxy retries and finally reports an error status.
        status, data, _ = await c.post({**BODY, "max_tokens": 10})
        assert status >= 500 and "error" in (data if isinstance(data, dict) else {"error": data})
        assert all_zero(c)


async def test_kill_a_decode_mid_load(tmp_path):
    """SIGKILL a decode under load: requests not yet streaming succeed elsewhere, flowing streams get an error event."""
    async with cluster(tmp_path, "mooncake_v1", 1, 1, options={"routing": "round_robin"},
                       decode_sim={"decode_step_ms": 10}) as c:
        proc, port = await spawn_sim("mooncake_v1", "decode", str(tmp_path / "kv"), "--sim-decode-step-ms", "10")
        try:
            async with c.session.post(c.url + "/v1/instances", headers=c.admin, json={"name": "decode-1", "role": "decode",
                                                                     "address": "127.0.0.1", "port": port}) as r:
                assert r.status == 201

            async def one(i: int):
                body = {**BODY, "prompt": f"{i} {LONG}", "max_tokens": 40}
                await asyncio.sleep(i * 0.01)
                if i % 2:
                    return ("stream", *await c.stream(body))
                return ("plain", *(await c.post(body))[:2])

            tasks = [asyncio.create_task(one(i)) for i in range(40)]
            # Kill once some streams are flowing from decode-1 and more requests are still queued.
            await wait_for(lambda: c.proxy.m_stage.count("ttft") >= 4 and c.backend("decode-1").inflight_requests >= 3)
            proc.send_signal(signal.SIGKILL)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            proc.kill()
            proc.wait()
        plain = [r for r in results if r[0] == "plain"]
        streams = [r for r in results if r[0] == "stream"]
        assert all(status == 200 and data["choices"][0]["text"] for _, status, data in plain), plain
        errored = 0
        for _, status, events in streams:
            assert status == 200 and events and events[-1] == "[DONE]"  # never an empty 200
            if "error" in events[-2]:
                errored += 1
                assert "decode-1" in events[-2]["error"]["message"]
            else:
                assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert 0 < errored < len(streams)  # some were mid-stream on the dead decode, the rest recovered
        text = await c.metrics()
        assert metric(text, "pd_proxy_requests_total", outcome="success") == 40 - errored
        assert metric(text, "pd_proxy_requests_total", outcome="stream_error") == errored
        await wait_for(lambda: c.backend("decode-1").ejected)
        assert all_zero(c)


async def test_counters_return_to_zero_after_1000_requests_with_random_disconnects(tmp_path):
    rng = random.Random(7)
    async with cluster(tmp_path, "mooncake_v1", 2, 2, options={"local_prefill_max_tokens": 30},
                       sim={"decode_step_ms": 1}) as c:
        sem = asyncio.Semaphore(40)
        results = {"done": 0, "cancelled": 0}

        async def one(i: int) -> None:
            prompt = LONG if i % 3 else "short prompt"
            body = {"model": MODEL, "prompt": f"{i} {prompt}", "max_tokens": rng.randint(1, 12),
                    "stream": bool(i % 2)}
            async with sem:
                request = asyncio.create_task(c.post(body))
                if rng.random() < 0.5:
                    await asyncio.sleep(rng.uniform(0, 0.01))
                    request.cancel()  # the client goes away at a random point
                try:
                    status = (await request)[0]
                    assert status == 200
                    results["done"] += 1
                except asyncio.CancelledError:
                    results["cancelled"] += 1

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 60)
        assert results["done"] + results["cancelled"] == 1000 and results["cancelled"] > 100
        await wait_for(lambda: all_zero(c), 5)
        text = await c.metrics()
        assert metric(text, "pd_proxy_client_disconnects_total") > 0
        assert metric(text, "pd_proxy_backend_inflight_requests") == 0
        # The engines saw the aborts too: nothing left running on them.
        for runner in (*c.prefill, *c.decode):
            await wait_for(lambda r=runner: r.engine.scheduler.running == 0, 5)


# ------------------------------------------------------------------------------------- instance API
async def test_instance_api_add_drain_undrain_delete(tmp_path):
    async with cluster(tmp_path, "centralized", 1, 1, sim={"decode_step_ms": 20}) as c:
        cfg = SimConfig(model=MODEL, host="127.0.0.1", port=free_port(), mooncake="off",
                        kv_transfer_config={"kv_connector": "ExampleConnector", "kv_role": "kv_consumer",
                                            "kv_connector_extra_config": {"shared_storage_path": str(tmp_path / "kv")}})
        extra = await SimRunner(cfg).start()
        try:
            async with c.session.post(c.url + "/v1/instances", headers=c.admin, json={"name": "decode-9", "role": "decode",
                                                                     "address": "127.0.0.1", "port": extra.port}) as r:
                assert r.status == 201 and (await r.json())["healthy"]
            async with c.session.post(c.url + "/v1/instances", headers=c.admin, json={"name": "decode-9", "role": "decode",
                                                                     "address": "127.0.0.1", "port": 1}) as r:
                assert r.status == 409
            async with c.session.post(c.url + "/v1/instances", headers=c.admin, json={"name": "decode-7", "role": "decode",
                                                                     "address": "127.0.0.1", "port": free_port()}) as r:
                body = await r.json()
                assert r.status == 201 and body["ejected"] and not body["healthy"]  # not up yet: no traffic
            async with c.session.delete(c.url + "/v1/instances/decode-7?timeout=0", headers=c.admin) as r:
                assert r.status == 200
            async with c.session.post(c.url + "/v1/instances", headers=c.admin, json={"name": "x", "role": "router",
                                                                     "address": "127.0.0.1", "port": 1}) as r:
                assert r.status == 400 and "role must be one of" in (await r.json())["error"]
            # Drain decode-0 while a stream runs on it: drain returns once it finished.
            stream = asyncio.create_task(c.stream({**BODY, "max_tokens": 15}))
            await wait_for(lambda: c.backend("decode-0").inflight_requests + c.backend("decode-9").inflight_requests)
            busy = "decode-0" if c.backend("decode-0").inflight_requests else "decode-9"
            other = "decode-9" if busy == "decode-0" else "decode-0"
            async with c.session.post(c.url + f"/v1/instances/{busy}/drain?timeout=5", headers=c.admin) as r:
                body = await r.json()
                assert r.status == 200 and body["drained"] and body["inflight_requests"] == 0
            assert stream.done() and (await stream)[1][-1] == "[DONE]"
            before = seen([extra]) if other == "decode-9" else seen(c.decode)
            for i in range(3):
                assert (await c.post({**BODY, "prompt": f"{i}{LONG}"}))[0] == 200
            after = seen([extra]) if other == "decode-9" else seen(c.decode)
            assert after[0] == before[0] + 3  # all went to the non-drained decode
            async with c.session.post(c.url + f"/v1/instances/{busy}/undrain", headers=c.admin) as r:
                assert r.status == 200 and not (await r.json())["draining"]
            async with c.session.delete(c.url + "/v1/instances/decode-9?timeout=2", headers=c.admin) as r:
                assert r.status == 200 and (await r.json())["removed"]
            async with c.session.get(c.url + "/v1/instances") as r:
                assert sorted(i["name"] for i in (await r.json())["instances"]) == ["decode-0", "prefill-0"]
            async with c.session.delete(c.url + "/v1/instances/decode-9", headers=c.admin) as r:
                assert r.status == 404
        finally:
            await extra.stop()


# ------------------------------------------------------------------------------------- CLI
async def test_cli_with_seed_flags_and_config_file(tmp_path):
    async with cluster(tmp_path, "mooncake_v1") as c:
        port = free_port()
        config = tmp_path / "proxy.json"
        config.write_text(json.dumps({"protocol": "nixl", "port": 1, "decode": [{"address": "10.255.255.1",
                                                                                 "port": 9}],
                                      "options": {"health_interval": 0.2}}))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "files" / "connector")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "openfuyao_pd.proxy", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--protocol", "mooncake_v1",
             "--prefiller-hosts", "127.0.0.1", "--prefiller-ports", str(c.prefill[0].port),
             "--decoder-hosts", "127.0.0.1", "--decoder-ports", str(c.decode[0].port)],
            env=env, stderr=subprocess.PIPE, text=True)
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=BODY) as r:
                    assert r.status == 200
            assert metric(await sim_metrics(c, c.decode[0]), "pd_sim_kv_loads_total", source="remote") == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert '"event": "request"' in err and '"outcome": "success"' in err
