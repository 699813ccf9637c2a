"""Each PD protocol driven by hand (P then D over real HTTP), as a proxy would."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

PROMPT = " ".join(f"word{i}" for i in range(40))  # 40 tokens: 2 full blocks of 16 + 8


async def post(url: str, body: dict, path: str = "/v1/completions", headers: dict | None = None
               ) -> tuple[int, dict, Any]:
    async with aiohttp.ClientSession() as session, \
            session.post(url + path, json=body, headers=headers or {}) as resp:
        text = await resp.text()
        data = json.loads(text) if text and resp.content_type == "application/json" else text
        return resp.status, dict(resp.headers), data


async def metric(url: str, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def prefill_body(max_tokens: int = 1, **extra: Any) -> dict:
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": max_tokens, "stream": False,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                                   "remote_block_ids": None, "remote_host": None, "remote_port": None}}
    body.update(extra)
    return body


async def test_mooncake_v1_round_trip_moves_kv(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1")
    d = await sim_factory("decode", "mooncake_v1")
    direct = await sim_factory("both", "none")
    rid = str(uuid.uuid4())
    status, _, pre = await post(p, prefill_body(min_tokens=1), headers={"X-Request-Id": rid})
    assert status == 200
    params = pre["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert params["remote_engine_id"] == p.config.engine_id
    assert params["remote_port"] == p.ports["side"] != p.ports["http"]
    assert len(params["remote_block_ids"]) == 3  # ceil(40 / 16)
    assert params["remote_request_id"].startswith(f"cmpl-{rid}-0-")
    assert pre["id"] == f"cmpl-{rid}-0"
    assert await metric(p, "pd_sim_kv_held_blocks") == 3

    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 8, "kv_transfer_params": params}
    status, headers, out = await post(d, body, headers={"X-Request-Id": rid})
    assert status == 200, out
    assert headers["x-sim-kv-source"] == "remote", headers
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 39
    assert await metric(p, "pd_sim_kv_held_blocks") == 0  # D told P it is done
    assert await metric(d, "vllm:external_prefix_cache_hits_total") == 39
    assert await metric(d, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer") == 39
    received = await metric(d, "pd_sim_kv_bytes_received_total")
    assert received == 40 * d.config.kv_bytes_per_token
    assert await metric(p, "pd_sim_kv_bytes_sent_total") == received

    # the PD path and a direct request produce the same output
    _, _, plain = await post(direct, {"prompt": PROMPT, "max_tokens": 8})
    assert out["choices"][0]["text"] == plain["choices"][0]["text"]
    assert plain["choices"][0]["text"].startswith(pre["choices"][0]["text"])  # P's one token is D's first


async def test_mooncake_v1_no_params_on_early_eos(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1")
    status, _, pre = await post(p, prefill_body(sim_eos_at=0))
    assert status == 200
    assert pre["choices"][0]["finish_reason"] == "stop"
    assert pre["kv_transfer_params"] is None
    assert await metric(p, "pd_sim_kv_params_withheld_total", reason="finished-stopped") == 1
    assert await metric(p, "pd_sim_kv_held_blocks") == 0
    # min_tokens=1 suppresses the EOS, as the vllm-ascend proxy relies on
    _, _, pre = await post(p, prefill_body(sim_eos_at=0, min_tokens=1))
    assert pre["choices"][0]["finish_reason"] == "length"
    assert pre["kv_transfer_params"]["do_remote_prefill"] is True


@pytest.mark.parametrize("drop", ["remote_host", "remote_request_id", "remote_block_ids", "remote_engine_id"])
async def test_mooncake_v1_decode_recomputes_on_incomplete_params(sim_factory, drop):
    p = await sim_factory("prefill", "mooncake_v1")
    d = await sim_factory("decode", "mooncake_v1")
    _, _, pre = await post(p, prefill_body())
    params = dict(pre["kv_transfer_params"])
    params[drop] = [] if drop == "remote_block_ids" else None
    status, headers, out = await post(d, {"prompt": PROMPT, "max_tokens": 4, "kv_transfer_params": params})
    assert status == 200
    assert headers["x-sim-kv-source"] == "local"
    assert headers["x-sim-kv-reason"] == "incomplete-params"
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert await metric(d, "vllm:external_prefix_cache_hits_total") == 0


async def test_decode_without_params_recomputes_and_says_so(sim_factory):
    d = await sim_factory("decode", "mooncake_v1")
    status, headers, _ = await post(d, {"prompt": PROMPT, "max_tokens": 2})
    assert status == 200
    assert (headers["x-sim-kv-source"], headers["x-sim-kv-reason"]) == ("local", "no-kv-params")
    assert await metric(d, "pd_sim_kv_loads_total", source="local", reason="no-kv-params") == 1


async def test_corrupted_kv_is_detected(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1", faults=["corrupt-kv"])
    d = await sim_factory("decode", "mooncake_v1")
    _, _, pre = await post(p, prefill_body())
    _, headers, _ = await post(d, {"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": pre["kv_transfer_params"]})
    assert (headers["x-sim-kv-source"], headers["x-sim-kv-reason"]) == ("local", "corrupt")
    assert await metric(p, "pd_sim_kv_held_blocks") == 0


async def test_kv_of_another_prompt_is_detected(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1")
    d = await sim_factory("decode", "mooncake_v1")
    _, _, pre = await post(p, prefill_body())
    other = PROMPT.replace("word0 ", "other ")
    _, headers, _ = await post(d, {"prompt": other, "max_tokens": 2, "kv_transfer_params": pre["kv_transfer_params"]})
    assert headers["x-sim-kv-source"] == "local"
    assert headers["x-sim-kv-reason"] == "corrupt"


async def test_held_kv_freed_by_timeout(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1", kv_hold_timeout_s=2.0)
    _, _, pre = await post(p, prefill_body())
    assert pre["kv_transfer_params"]
    assert await metric(p, "pd_sim_kv_held_blocks") == 3
    for _ in range(100):
        if await metric(p, "pd_sim_kv_held_blocks") == 0:
            break
        await asyncio.sleep(0.1)
    assert await metric(p, "pd_sim_kv_held_blocks") == 0
    assert await metric(p, "pd_sim_kv_held_freed_total", reason="timeout") == 1


async def test_rejected_decode_frees_prefill_blocks(sim_factory):
    p = await sim_factory("prefill", "mooncake_v1")
    d = await sim_factory("decode", "mooncake_v1", max_model_len=48)
    _, _, pre = await post(p, prefill_body())
    status, _, out = await post(d, {"prompt": PROMPT, "max_tokens": 100, "kv_transfer_params": pre["kv_transfer_params"]})
    assert status == 400 and "maximum context length" in out["message"]
    assert await metric(p, "pd_sim_kv_held_blocks") == 0


async def test_nixl_params_also_on_stop_and_min_tokens_rejected_on_prefill(sim_factory):
    p = await sim_factory("prefill", "nixl")
    d = await sim_factory("decode", "nixl")
    # the client's min_tokens left on a max_tokens=1 prefill is what vLLM rejects (why proxies drop it on P)
    status, _, out = await post(p, prefill_body(min_tokens=5))
    assert status == 400 and "min_tokens (5) must be less than or equal to max_tokens (1)" in out["message"]
    _, _, pre = await post(p, prefill_body(sim_eos_at=0))
    assert pre["choices"][0]["finish_reason"] == "stop"
    params = pre["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["tp_size"] == 1
    status, headers, out = await post(d, {"prompt": PROMPT, "max_tokens": 5, "min_tokens": 5,
                                          "kv_transfer_params": params})
    assert status == 200 and headers["x-sim-kv-source"] == "remote"
    assert out["usage"]["completion_tokens"] == 5


async def test_upstream_mooncake_push_concurrent(sim_factory):
    p = await sim_factory("prefill", "mooncake")
    d = await sim_factory("decode", "mooncake")
    direct = await sim_factory("both", "none")
    async with aiohttp.ClientSession() as session, session.get(p.bootstrap_url + "/query") as resp:
        ranks = await resp.json()
    engine_id = ranks["0"]["engine_id"]
    xfer = f"xfer-{uuid.uuid4()}"
    p_body = {"prompt": PROMPT, "max_tokens": 1, "stream": False,
              "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": xfer}}
    d_body = {"prompt": PROMPT, "max_tokens": 6,
              "kv_transfer_params": {"do_remote_decode": False, "do_remote_prefill": True, "transfer_id": xfer,
                                     "remote_bootstrap_addr": p.bootstrap_url, "remote_engine_id": engine_id}}
    # D first (it waits for P), then P: the order the proxy cannot control
    d_task = asyncio.create_task(post(d, d_body))
    await asyncio.sleep(0.1)
    (p_status, _, pre) = await post(p, p_body)
    d_status, headers, out = await d_task
    assert p_status == 200 and pre["kv_transfer_params"] is None
    assert d_status == 200 and headers["x-sim-kv-source"] == "remote", headers
    _, _, plain = await post(direct, {"prompt": PROMPT, "max_tokens": 6})
    assert out["choices"][0]["text"] == plain["choices"][0]["text"]
    assert await metric(p, "pd_sim_kv_held_blocks") == 0


async def test_upstream_mooncake_eos_means_unprocessed(sim_factory):
    p = await sim_factory("prefill", "mooncake")
    d = await sim_factory("decode", "mooncake")
    xfer = f"xfer-{uuid.uuid4()}"
    p_body = {"prompt": PROMPT, "max_tokens": 1, "sim_eos_at": 0,
              "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": xfer}}
    d_body = {"prompt": PROMPT, "max_tokens": 3,
              "kv_transfer_params": {"do_remote_decode": False, "do_remote_prefill": True, "transfer_id": xfer,
                                     "remote_bootstrap_addr": p.bootstrap_url,
                                     "remote_engine_id": p.config.engine_id}}
    (_, _, pre), (_, headers, _) = await asyncio.gather(post(p, p_body), post(d, d_body))
    assert pre["choices"][0]["finish_reason"] == "stop"
    assert (headers["x-sim-kv-source"], headers["x-sim-kv-reason"]) == ("local", "finished-stopped")


async def test_centralized_shared_storage_round_trip(sim_factory, sim_shared_dir):
    p = await sim_factory("prefill", "centralized")
    d = await sim_factory("decode", "centralized")
    status, _, pre = await post(p, {"prompt": PROMPT, "max_tokens": 1})
    assert status == 200 and pre["kv_transfer_params"] is None
    files = sorted(sim_shared_dir.rglob("*.kv"))
    assert len(files) == 2  # only the 2 full blocks of 16 tokens
    assert all(f.stat().st_size == 16 * p.config.kv_bytes_per_token for f in files)
    status, headers, out = await post(d, {"prompt": PROMPT, "max_tokens": 4})
    assert headers["x-sim-kv-source"] == "shared"
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
    assert await metric(d, "pd_sim_kv_bytes_received_total", transport="shared") == 2 * 16 * d.config.kv_bytes_per_token
    # corrupt one block on the shared volume: D notices and recomputes from there
    files[0].write_bytes(b"\0" * files[0].stat().st_size)
    d2 = await sim_factory("decode", "centralized")
    _, headers, out = await post(d2, {"prompt": PROMPT, "max_tokens": 4})
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] in (0, 16)
    assert headers["x-sim-kv-reason"] in ("corrupt", "ok")


async def test_ipv6_round_trip(sim_factory):
    p = await sim_factory("prefill", "nixl", host="::1")
    d = await sim_factory("decode", "nixl", host="::1")
    assert p.startswith("http://[::1]:")
    _, _, pre = await post(p, prefill_body())
    assert pre["kv_transfer_params"]["remote_host"] == "::1"
    status, headers, _ = await post(d, {"prompt": PROMPT, "max_tokens": 2,
                                        "kv_transfer_params": pre["kv_transfer_params"]})
    assert status == 200 and headers["x-sim-kv-source"] == "remote"


async def test_centralized_between_processes(sim_process_factory, tmp_path):
    """Two engine processes sharing only a directory (as two containers share a volume)."""
    shared = tmp_path / "volume"
    ktc = {"kv_connector": "ExampleConnector", "kv_connector_extra_config": {"shared_storage_path": str(shared)}}
    p_url, _ = await sim_process_factory("serve", "tiny-llama", "--kv-transfer-config",
                                         json.dumps({**ktc, "kv_role": "kv_producer"}))
    d_url, _ = await sim_process_factory("serve", "tiny-llama", "--kv-transfer-config",
                                         json.dumps({**ktc, "kv_role": "kv_consumer"}))
    _, _, pre = await post(p_url, {"prompt": PROMPT, "max_tokens": 1})
    _, headers, out = await post(d_url, {"prompt": PROMPT, "max_tokens": 3})
    assert headers["x-sim-kv-source"] == "shared"
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
    assert await metric(d_url, "pd_sim_kv_bytes_received_total", transport="shared") == 32 * 2048
    assert out["choices"][0]["text"].startswith(pre["choices"][0]["text"])


async def test_aborted_decode_releases_prefill_kv(sim_factory):
    """A decode request that is queued when its client goes away still frees P's blocks."""
    p = await sim_factory("prefill", "mooncake_v1")
    d = await sim_factory("decode", "mooncake_v1", max_num_seqs=1, decode_step_ms=20)
    busy = asyncio.create_task(post(d, {"prompt": PROMPT, "max_tokens": 1000}))  # holds D's only slot
    for _ in range(100):
        if d.engine.scheduler.running == 1:
            break
        await asyncio.sleep(0.01)
    _, _, pre = await post(p, prefill_body())
    assert await metric(p, "pd_sim_kv_held_blocks") == 3
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
            await session.post(d + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2,
                                                            "kv_transfer_params": pre["kv_transfer_params"]})
    for _ in range(100):
        if await metric(p, "pd_sim_kv_held_blocks") == 0:
            break
        await asyncio.sleep(0.02)
    assert await metric(p, "pd_sim_kv_held_blocks") == 0
    assert await metric(p, "pd_sim_kv_held_freed_total", reason="pulled") == 1  # released, not expired
    assert await metric(d, "pd_sim_kv_bytes_received_total") == 0  # D never fetched: it was queued
    busy.cancel()


async def test_centralized_write_failure_is_counted_not_fatal(sim_factory):
    import shutil

    p = await sim_factory("prefill", "centralized")
    root = p.engine.shared.root
    shutil.rmtree(root)
    root.write_text("the volume went away")  # every block directory below it now fails
    status, _, _ = await post(p, {"prompt": PROMPT, "max_tokens": 1})
    assert status == 200
    assert await metric(p, "pd_sim_kv_store_errors_total") == 1
