"""The simulator's OpenAI-compatible surface: ids, streaming, usage, determinism, errors, metrics."""

from __future__ import annotations

import json

import aiohttp

PROMPT = " ".join(f"w{i}" for i in range(20))


async def _post(url: str, body: dict, path: str = "/v1/completions", headers: dict | None = None):
    async with aiohttp.ClientSession() as session, session.post(url + path, json=body, headers=headers or {}) as resp:
        raw = await resp.read()
        return resp.status, resp.headers, raw


def _sse(raw: bytes) -> list:
    events = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_completion_ids_usage_and_token_ids(sim_factory):
    sim = await sim_factory("both", "none")
    status, headers, raw = await _post(sim, {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 5,
                                             "return_token_ids": True}, headers={"X-Request-Id": "abc"})
    body = json.loads(raw)
    assert status == 200 and headers["X-Request-Id"] == "abc"
    assert body["id"] == "cmpl-abc-0" and body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["token_ids"]) == 5 and len(choice["prompt_token_ids"]) == 20
    assert len(choice["text"].split()) == 5
    assert body["kv_transfer_params"] is None


async def test_chat_stream_and_non_stream_agree(sim_factory):
    sim = await sim_factory("both", "none")
    messages = [{"role": "user", "content": "hello there"}]
    _, _, raw = await _post(sim, {"messages": messages, "max_tokens": 6}, "/v1/chat/completions",
                            {"X-Request-Id": "r1"})
    whole = json.loads(raw)
    assert whole["id"] == "chatcmpl-r1" and whole["object"] == "chat.completion"
    status, headers, raw = await _post(sim, {"messages": messages, "max_tokens": 6, "stream": True,
                                             "stream_options": {"include_usage": True}}, "/v1/chat/completions")
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = _sse(raw)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-2])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 6


async def test_completion_stream_chunks(sim_factory):
    sim = await sim_factory("both", "none")
    _, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 4, "stream": True})
    events = _sse(raw)
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, None, None, "length"]
    _, _, whole = await _post(sim, {"prompt": PROMPT, "max_tokens": 4})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == json.loads(whole)["choices"][0]["text"]


async def test_output_is_a_function_of_prompt_and_seed(sim_factory):
    a = await sim_factory("both", "none", seed=7)
    b = await sim_factory("decode", "mooncake_v1", seed=7)
    c = await sim_factory("both", "none", seed=8)
    texts = []
    for sim in (a, b, c):
        _, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 12})
        texts.append(json.loads(raw)["choices"][0]["text"])
    assert texts[0] == texts[1] != texts[2]
    _, _, raw = await _post(c, {"prompt": PROMPT, "max_tokens": 12, "seed": 7})  # request seed wins
    assert json.loads(raw)["choices"][0]["text"] == texts[0]
    _, _, raw = await _post(a, {"prompt": PROMPT + " more", "max_tokens": 12})
    assert json.loads(raw)["choices"][0]["text"] != texts[0]


async def test_eos_min_tokens_and_ignore_eos(sim_factory):
    sim = await sim_factory("both", "none")
    _, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 10, "sim_eos_at": 3})
    body = json.loads(raw)
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 4
    _, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 10, "sim_eos_at": 3, "min_tokens": 6})
    assert json.loads(raw)["usage"]["completion_tokens"] == 7
    _, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 10, "sim_eos_at": 3, "ignore_eos": True})
    assert json.loads(raw)["choices"][0]["finish_reason"] == "length"


async def test_eos_rate_is_deterministic(sim_factory):
    a = await sim_factory("both", "none", eos_rate=0.2)
    b = await sim_factory("both", "none", eos_rate=0.2)
    lengths = []
    for sim in (a, b):
        out = []
        for i in range(10):
            _, _, raw = await _post(sim, {"prompt": f"{PROMPT} {i}", "max_tokens": 30})
            out.append(json.loads(raw)["usage"]["completion_tokens"])
        lengths.append(out)
    assert lengths[0] == lengths[1]
    assert min(lengths[0]) < 30  # some stopped early


async def test_errors_are_openai_shaped(sim_factory):
    sim = await sim_factory("both", "none", max_model_len=30)
    status, _, raw = await _post(sim, {"model": "other", "prompt": "x"})
    assert status == 404 and "does not exist" in json.loads(raw)["message"]
    status, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 20})
    assert status == 400 and "maximum context length is 30" in json.loads(raw)["message"]
    status, _, raw = await _post(sim, {"prompt": ""})
    assert status == 400
    status, _, raw = await _post(sim, {"prompt": "x", "priority": 1})
    assert status == 400 and "Priority scheduling is not enabled" in json.loads(raw)["message"]
    async with aiohttp.ClientSession() as session, session.post(sim + "/v1/completions", data=b"{nope",
                                                                headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400 and "not valid JSON" in (await r.json())["message"]


async def test_models_health_and_metric_names(sim_factory):
    sim = await sim_factory("decode", "mooncake_v1", served_model_name="served")
    async with aiohttp.ClientSession() as session:
        async with session.get(sim + "/v1/models") as resp:
            models = await resp.json()
        async with session.get(sim + "/health") as resp:
            assert resp.status == 200
        await session.post(sim + "/v1/completions", json={"model": "served", "prompt": PROMPT, "max_tokens": 3})
        async with session.get(sim + "/metrics") as resp:
            text = await resp.text()
    assert models["data"][0]["id"] == "served" and models["data"][0]["max_model_len"] == 4096
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:external_prefix_cache_hits_total",
                 "vllm:prompt_tokens_by_source_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:kv_cache_usage_perc", "pd_sim_kv_held_blocks",
                 "pd_sim_kv_bytes_sent_total", "pd_sim_kv_bytes_received_total", "vllm:request_success_total"):
        assert f"\n{name}{{" in text, name
    # prometheus_client's text format, as vLLM exports it: labels sorted by name, values as floats.
    assert 'vllm:prompt_tokens_total{engine="0",model_name="served"} 20.0' in text
    assert 'vllm:generation_tokens_total{engine="0",model_name="served"} 3.0' in text
    assert 'vllm:time_to_first_token_seconds_count{engine="0",model_name="served"} 1.0' in text
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="served"} 1.0' in text


async def test_api_key_guards_v1_only(sim_factory):
    sim = await sim_factory("both", "none", api_key="s3cret")
    status, _, raw = await _post(sim, {"prompt": PROMPT, "max_tokens": 1})
    assert status == 401 and json.loads(raw) == {"error": "Unauthorized"}
    status, _, _ = await _post(sim, {"prompt": PROMPT, "max_tokens": 1}, headers={"Authorization": "Bearer s3cret"})
    assert status == 200
    async with aiohttp.ClientSession() as session, session.get(sim + "/health") as resp:
        assert resp.status == 200  # health and metrics stay open, as in vLLM


async def test_phase_histograms(sim_factory):
    sim = await sim_factory("both", "none")
    await _post(sim, {"prompt": PROMPT, "max_tokens": 3})
    async with aiohttp.ClientSession() as session, session.get(sim + "/metrics") as resp:
        text = await resp.text()
    for name in ("vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
                 "vllm:request_queue_time_seconds", "vllm:inter_token_latency_seconds"):
        assert f'{name}_count{{engine="0",model_name="tiny-llama"}}' in text, name
