"""The proxy against simulated vLLM engines: protocols, routing, load awareness, batch priority, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from aiohttp import web
from proxy_helpers import cluster

LONG = "the quick brown fox jumps over the lazy dog " * 40  # ~1800 chars, ~450 estimated tokens
MODEL = "tiny-llama"


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, value = line.rsplit(" ", 1)
        got = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


async def sim_metrics(c, runner) -> str:
    async with c.session.get(f"{runner.url}/metrics") as resp:
        return await resp.text()


# ------------------------------------------------------------------------------------- protocols
@pytest.mark.parametrize("protocol", ["mooncake_v1", "nixl", "mooncake", "centralized"])
async def test_protocol_end_to_end(tmp_path, protocol):
    async with cluster(tmp_path, protocol) as c:
        status, data, headers = await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 6, "min_tokens": 2},
                                             headers={"X-Request-Id": "req-abc"})
        assert status == 200, data
        assert data["id"] == "cmpl-req-abc-0" and headers["X-Request-Id"] == "req-abc"  # D saw the same id
        assert data["choices"][0]["finish_reason"] == "length" and data["choices"][0]["text"]
        # Decode took the prompt's KV from the prefill side instead of recomputing it.
        d_metrics = await sim_metrics(c, c.decode[0])
        source = "shared" if protocol == "centralized" else "remote"
        assert metric(d_metrics, "pd_sim_kv_loads_total", source=source) == 1, d_metrics
        # Clients see what the prefill side computed from its cache (0 on a cold P), not D's transferred count.
        assert metric(d_metrics, "vllm:external_prefix_cache_hits_total") > 0
        assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        # Streaming chat through the same pair.
        status, events = await c.stream({"model": MODEL, "messages": [{"role": "user", "content": LONG}],
                                         "max_tokens": 5, "stream_options": {"include_usage": True}},
                                        "/v1/chat/completions")
        assert status == 200 and events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e.get("choices"))
        assert events[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert metric(await sim_metrics(c, c.decode[0]), "pd_sim_kv_loads_total", source=source) == 2
        if protocol != "centralized":
            state = await c.sim_state(c.prefill[0])
            assert state["held_requests"] == [] and state["freed"]["pulled"] == 2  # P's KV was handed over
        text = await c.metrics()
        assert metric(text, "pd_proxy_requests_total", route="disagg", outcome="success") == 2
        assert metric(text, "pd_proxy_missing_kv_params_total") == 0
        assert all(v == (0, 0) for v in c.counters().values())


async def test_mooncake_v1_forces_min_tokens_so_an_early_eos_still_hands_kv_over(tmp_path):
    async with cluster(tmp_path, "mooncake_v1") as c:
        status, data, _ = await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 4, "sim_eos_at": 0})
        assert status == 200, data
        assert metric(await sim_metrics(c, c.decode[0]), "pd_sim_kv_loads_total", source="remote") == 1
        assert metric(await sim_metrics(c, c.prefill[0]), "pd_sim_kv_params_returned_total") == 1


async def test_cached_tokens_reports_prefill_prefix_hits(tmp_path):
    async with cluster(tmp_path, "nixl") as c:
        await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 2})
        status, data, _ = await c.post({"model": MODEL, "prompt": LONG + " again", "max_tokens": 2})
        assert status == 200
        cached = data["usage"]["prompt_tokens_details"]["cached_tokens"]
        p_metrics = await sim_metrics(c, c.prefill[0])
        assert cached > 0 and cached == metric(p_metrics, "vllm:prefix_cache_hits_total")


async def test_missing_params_is_counted_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="openfuyao_pd.proxy")
    async with cluster(tmp_path, "mooncake_v1", prefill_sim={"faults": ["no-params"]}) as c:
        status, data, _ = await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 3})
        assert status == 200 and data["choices"][0]["text"]  # D recomputed
        text = await c.metrics()
        assert metric(text, "pd_proxy_missing_kv_params_total", backend="prefill-0") == 1
        assert metric(await sim_metrics(c, c.decode[0]), "pd_sim_kv_loads_total", source="local") == 1
    assert any('"event": "missing_kv_params"' in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------- routing
def seen(runners) -> list[int]:
    return [r.engine.requests_seen for r in runners]


async def test_round_robin_spreads_evenly(tmp_path):
    async with cluster(tmp_path, "centralized", 2, 3, options={"routing": "round_robin"}) as c:
        for i in range(6):
            assert (await c.post({"model": MODEL, "prompt": f"{i} {LONG}", "max_tokens": 2}))[0] == 200
        assert seen(c.decode) == [2, 2, 2] and seen(c.prefill) == [3, 3]


async def test_prefix_affinity_keeps_a_conversation_on_one_decode(tmp_path):
    async with cluster(tmp_path, "centralized", 1, 3, options={"routing": "prefix_affinity"}) as c:
        for i in range(6):
            assert (await c.post({"model": MODEL, "prompt": LONG + f" turn {i}", "max_tokens": 2}))[0] == 200
        assert sorted(seen(c.decode)) == [0, 0, 6]
        home = seen(c.decode).index(6)
        await c.post({"model": MODEL, "prompt": "another topic " * 100, "max_tokens": 2})
        await c.post({"model": MODEL, "prompt": LONG + " turn 7", "max_tokens": 2})
        assert seen(c.decode)[home] >= 7 and sum(seen(c.decode)) == 8


async def test_least_load_holds_decode_load_until_stream_ends(tmp_path):
    async with cluster(tmp_path, "centralized", 1, 2, sim={"decode_step_ms": 20}) as c:
        long_stream = asyncio.create_task(c.stream({"model": MODEL, "prompt": LONG, "max_tokens": 30}))
        await asyncio.sleep(0.2)
        busy = [b for b in c.proxy.available("decode") if b.inflight_requests]
        assert len(busy) == 1 and busy[0].inflight_tokens >= 450  # prompt + max_tokens, held while streaming
        for i in range(3):  # short requests avoid the busy decode
            assert (await c.post({"model": MODEL, "prompt": f"short {i}", "max_tokens": 1}))[0] == 200
        idle = next(r for r, b in zip(c.decode, [c.backend("decode-0"), c.backend("decode-1")], strict=True)
                if b is not busy[0])
        assert idle.engine.requests_seen == 3
        status, events = await long_stream
        assert status == 200 and events[-1] == "[DONE]"
        assert all(v == (0, 0) for v in c.counters().values())


# ------------------------------------------------------------------------------------- PD load awareness
async def test_short_prompts_prefill_locally_on_decode(tmp_path):
    opts = {"local_prefill_max_tokens": 100}
    async with cluster(tmp_path, "mooncake_v1", options=opts) as c:
        short = "x" * 400  # 100 estimated tokens: == threshold -> local
        assert (await c.post({"model": MODEL, "prompt": short, "max_tokens": 2}))[0] == 200
        assert seen(c.prefill) == [0] and seen(c.decode) == [1]
        d_metrics = await sim_metrics(c, c.decode[0])
        assert metric(d_metrics, "pd_sim_kv_loads_total", source="local", reason="no-kv-params") == 1
        assert (await c.post({"model": MODEL, "prompt": "y" * 404, "max_tokens": 2}))[0] == 200  # 101 -> disagg
        assert seen(c.prefill) == [1] and seen(c.decode) == [2]
        # A long prompt whose prefix is cached on the decode has a short *uncached* part -> local.
        assert (await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 2}))[0] == 200
        assert (await c.post({"model": MODEL, "prompt": LONG + "tail", "max_tokens": 2}))[0] == 200
        assert seen(c.prefill) == [2] and seen(c.decode) == [4]
        text = await c.metrics()
        assert metric(text, "pd_proxy_route_decisions_total", decision="local", reason="short_prompt") == 2
        assert metric(text, "pd_proxy_route_decisions_total", decision="disagg", reason="default") == 2
        assert metric(text, "pd_proxy_requests_total", route="local", outcome="success") == 2


async def test_long_prefill_queue_sends_to_decode_unless_decode_busy(tmp_path):
    opts = {"prefill_queue_threshold": 2}
    async with cluster(tmp_path, "nixl", options=opts, prefill_sim={"faults": ["delay:400"]}) as c:
        body = {"model": MODEL, "prompt": LONG, "max_tokens": 2}
        queued = [asyncio.create_task(c.post(body)) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert c.backend("prefill-0").inflight_requests == 2
        assert (await c.post(body))[0] == 200  # queue 2 >= 2 -> local prefill on decode, not waiting 400 ms
        assert c.backend("prefill-0").inflight_requests == 2 and seen(c.prefill) == [2]
        c.proxy.opts["decode_busy_threshold"] = 3  # now also guard on decode load
        c.backend("decode-0").inflight_requests += 3  # pretend three streams are decoding
        try:
            late = asyncio.create_task(c.post(body))
            await asyncio.sleep(0.1)
            assert seen(c.prefill) == [3]  # decode too busy: disaggregated despite the queue
        finally:
            c.backend("decode-0").inflight_requests -= 3
        assert [r[0] for r in await asyncio.gather(*queued, late)] == [200, 200, 200]
        text = await c.metrics()
        assert metric(text, "pd_proxy_route_decisions_total", decision="local", reason="prefill_queue") == 1
        assert metric(text, "pd_proxy_route_decisions_total", decision="disagg", reason="decode_busy") == 1
        assert metric(text, "pd_proxy_route_decisions_total", decision="disagg", reason="default") == 2


async def test_load_awareness_off_by_default(tmp_path):
    async with cluster(tmp_path, "nixl") as c:
        for _ in range(3):
            assert (await c.post({"model": MODEL, "prompt": "hi", "max_tokens": 1}))[0] == 200
        assert seen(c.prefill) == [3]
        assert metric(await c.metrics(), "pd_proxy_route_decisions_total", decision="disagg", reason="default") == 3


# ------------------------------------------------------------------------------------- batch integration
async def test_batch_priority_schedules_short_prompts_first(tmp_path):
    opts = {"batch_priority": True, "priority_buckets": [[64, 0], [1024, 5]]}
    prefill = {"scheduling_policy": "priority", "max_num_seqs": 1, "prefill_ms_per_token": 0.5}
    async with cluster(tmp_path, "mooncake_v1", options=opts, prefill_sim=prefill) as c:
        order: list[str] = []

        async def run(name: str, prompt: str) -> None:
            status, data, _ = await c.post({"model": MODEL, "prompt": prompt, "max_tokens": 1})
            assert status == 200, data
            order.append(name)

        first = asyncio.create_task(run("blocker", LONG))  # occupies the only prefill slot
        await asyncio.sleep(0.05)
        long_task = asyncio.create_task(run("long", LONG + " 2"))
        await asyncio.sleep(0.02)
        short_task = asyncio.create_task(run("short", "short prompt"))
        await asyncio.gather(first, long_task, short_task)
        assert order.index("short") < order.index("long")  # priority 0 overtook priority 5 in P's queue


async def test_wire_format_headers_and_priority(tmp_path):
    """Inspect exactly what reaches P and D (a recording backend, since the sim does not echo requests)."""
    seen_requests: list[tuple[str, dict, dict]] = []

    def recorder(role: str) -> web.Application:
        async def completions(request: web.Request) -> web.Response:
            body = await request.json()
            seen_requests.append((role, body, {k.lower(): v for k, v in request.headers.items()}))
            if role == "prefill":
                return web.json_response({"choices": [{"text": "a"}], "kv_transfer_params": {"remote_block_ids": [7]},
                                          "usage": {"prompt_tokens_details": {"cached_tokens": 5}}})
            return web.json_response({"choices": [{"text": "b"}], "usage": {"prompt_tokens": 9}})

        async def health(_request: web.Request) -> web.Response:
            return web.Response()

        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/health", health)
        return app

    from openfuyao_pd.proxy.config import build_config
    from openfuyao_pd.proxy.server import start

    runners = []
    ports = []
    for role in ("prefill", "decode"):
        r = web.AppRunner(recorder(role))
        await r.setup()
        site = web.TCPSite(r, "127.0.0.1", 0)
        await site.start()
        runners.append(r)
        ports.append(site._server.sockets[0].getsockname()[1])
    cfg = build_config({"protocol": "mooncake_v1", "port": 0,
                        "prefill": [{"address": "127.0.0.1", "port": ports[0]}],
                        "decode": [{"address": "127.0.0.1", "port": ports[1]}],
                        "options": {"batch_priority": True}})
    proxy_runner, _proxy, port = await start(cfg, "127.0.0.1", 0)
    try:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            for prompt in ("x" * 40, "x" * 4000, "x" * 40000):
                async with s.post(f"http://127.0.0.1:{port}/v1/completions",
                                  json={"prompt": prompt, "max_tokens": 9, "min_tokens": 3, "stream": False},
                                  headers={"Authorization": "Bearer sk-secret"}) as resp:
                    data = await resp.json()
                    assert resp.status == 200
                    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    finally:
        await proxy_runner.cleanup()
        for r in runners:
            await r.cleanup()
    prefills = [(b, h) for role, b, h in seen_requests if role == "prefill"]
    decodes = [(b, h) for role, b, h in seen_requests if role == "decode"]
    assert [b["priority"] for b, _ in prefills] == [0, 1, 3]  # buckets 512 / 2048 / 8192 / above
    assert all("priority" not in b for b, _ in decodes)
    for (pb, ph), (db, dh) in zip(prefills, decodes, strict=True):
        assert ph["x-request-id"] == dh["x-request-id"]
        assert ph["authorization"] == dh["authorization"] == "Bearer sk-secret"
        assert (pb["max_tokens"], pb["min_tokens"], pb["stream"]) == (1, 1, False)
        assert pb["kv_transfer_params"]["do_remote_decode"] is True
        assert db["kv_transfer_params"] == {"remote_block_ids": [7]}
        assert (db["max_tokens"], db["min_tokens"]) == (9, 3)


# ------------------------------------------------------------------------------------- other endpoints
async def test_models_health_metrics_and_request_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="openfuyao_pd.proxy")
    async with cluster(tmp_path, "centralized") as c:
        async with c.session.get(c.url + "/v1/models") as resp:
            assert resp.status == 200 and (await resp.json())["data"][0]["id"] == MODEL
        async with c.session.get(c.url + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with c.session.post(c.url + "/v1/completions", json={"model": MODEL, "prompt": "SECRET-PROMPT " * 9,
                                                                   "max_tokens": 2},
                                  headers={"Authorization": "Bearer sk-topsecret"}) as resp:
            assert resp.status == 200
        async with c.session.post(c.url + "/v1/completions", data=b"{not json") as resp:
            assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]
        text = await c.metrics()
        for stage in ("prefill", "handoff", "ttft", "e2e"):
            assert metric(text, "pd_proxy_stage_seconds_count", stage=stage) >= 1, stage
        assert metric(text, "pd_proxy_backend_healthy", backend="decode-0", role="decode") == 1
        assert 'pd_proxy_backend_inflight_requests{backend="prefill-0",role="prefill"} 0.0' in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith('{"event": "request"')]
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "disagg" and line["prefill"] == "prefill-0" and line["decode"] == "decode-0"
    assert line["outcome"] == "success" and line["e2e_ms"] > 0 and line["request_id"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRET-PROMPT" not in logged and "sk-topsecret" not in logged


async def test_ipv6_listen_and_backends(tmp_path):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with cluster(tmp_path, "mooncake_v1", proxy_host="::1", sim={"host": "::1"}) as c:
        assert c.url.startswith("http://[::1]:")
        assert c.backend("decode-0").url.startswith("http://[::1]:")
        status, data, _ = await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 2})
        assert status == 200, data
        assert metric(await c.metrics(), "pd_proxy_missing_kv_params_total") == 0


async def test_upstream_mooncake_engine_id_comes_from_the_bootstrap_server(tmp_path):
    async with cluster(tmp_path, "mooncake") as c:
        c.backend("prefill-0").engine_id = "stale-configured-id"  # e.g. the plan's id while DP ranks differ
        status, data, _ = await c.post({"model": MODEL, "prompt": LONG, "max_tokens": 3})
        assert status == 200, data
        assert c.backend("prefill-0").engine_id == "prefill-0"  # what GET /query answered
        assert metric(await sim_metrics(c, c.decode[0]), "pd_sim_kv_loads_total", source="remote") == 1
