"""One request's run on the simulated engine, without HTTP (the handlers in sim/server.py drive it):
where the prompt's KV comes from, the prefill's compute and what it stores or pushes, token
generation with the timing model, and what a finished prefill hands on to a decode."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.sim import layerwise, model
from openfuyao_pd.sim.engine import HeldKv, KvLoad, Request, SimEngine

LOG = logging.getLogger("pd-engine-sim")


class Abort(Exception):
    """Drop the client connection without an answer (crash-like faults)."""


async def source_kv(engine: SimEngine, req: Request, hashes: list[bytes]) -> tuple[KvLoad, int, bytes, bool]:
    """Where the prompt's KV comes from: (load, local prefix-cache hits in tokens, the expected KV
    bytes, whether this request moves KV at all)."""
    cfg = engine.config
    prompt_len = len(req.prompt_ids)
    local_hits = min(engine.prefix_cache.hits(hashes) * cfg.block_size, prompt_len - 1)
    need_kv = cfg.kv_bytes_per_token > 0 and (
        cfg.protocol == "centralized" or bool(req.ktp.get("do_remote_prefill") or req.ktp.get("do_remote_decode")))
    expected = (model.kv_content(req.prompt_ids, cfg.kv_bytes_per_token, cfg.model_tag, cfg.block_size)
                if need_kv else b"")
    load = KvLoad(reason="no-kv-params")
    if cfg.protocol in ("mooncake_v1", "nixl", "mooncake") and cfg.is_consumer:
        load = await engine.load_remote(req, expected)
    elif cfg.protocol == "mooncake_layerwise" and cfg.is_consumer and need_kv:
        load = await _load_layerwise(engine, req, expected)
    elif engine.pool is not None and cfg.is_producer and need_kv:
        load = await _load_pool(engine, hashes, expected)
    elif cfg.protocol == "centralized" and cfg.is_consumer and engine.shared is not None and need_kv:
        block_bytes = cfg.block_size * cfg.kv_bytes_per_token
        loaded, nbytes, reason = await asyncio.get_running_loop().run_in_executor(
            None, engine.shared.load, hashes, expected, block_bytes)
        engine.metrics.inc("pd_sim_kv_bytes_received_total", nbytes, labels={"transport": "shared"})
        load = KvLoad(source="shared" if loaded else "local", reason=reason, tokens=loaded * cfg.block_size)
    return load, local_hits, expected, need_kv


async def prefill(engine: SimEngine, req: Request, hashes: list[bytes], computed: int, expected: bytes,
                  need_kv: bool) -> None:
    """The prefill's compute time for the `computed` tokens, then the KV it caches, stores or pushes."""
    cfg = engine.config
    if cfg.prefill_ms_per_token > 0:
        chunk = max(1, cfg.max_num_batched_tokens)
        for start in range(0, computed, chunk):
            tokens = min(chunk, computed - start)
            await engine.lane.run(tokens * cfg.prefill_ms_per_token / 1000.0, req.priority)
    engine.prefix_cache.insert(hashes)
    if engine.pool is not None and cfg.is_producer and need_kv:
        written = await asyncio.get_running_loop().run_in_executor(
            None, engine.pool.save, hashes, expected, cfg.block_size * cfg.kv_bytes_per_token)
        engine.metrics.inc("pd_sim_kv_bytes_sent_total", written, labels={"transport": "pool"})
    if cfg.protocol == "mooncake_layerwise" and cfg.is_producer and need_kv and req.ktp.get("do_remote_decode"):
        pushed = await layerwise.push(engine, req, expected)
        engine.metrics.inc("pd_sim_kv_pushes_total", labels={"reason": pushed})
    if cfg.protocol == "centralized" and cfg.is_producer and engine.shared is not None and need_kv:
        written = await asyncio.get_running_loop().run_in_executor(
            None, engine.shared.save, hashes, expected, cfg.block_size * cfg.kv_bytes_per_token)
        engine.metrics.inc("pd_sim_kv_bytes_sent_total", written, labels={"transport": "shared"})


async def _load_layerwise(engine: SimEngine, req: Request, expected: bytes) -> KvLoad:
    """Layerwise decode: post our blocks to the proxy's metaserver, check what the prefill pushed."""
    try:
        data, _transport, reason = await layerwise.receive(engine, req, expected)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        LOG.warning("%s: metaserver unreachable (%s); recomputing", req.internal_id, type(exc).__name__)
        return KvLoad(reason="metaserver-unreachable")
    if data is None:
        return KvLoad(reason=reason)
    if data != expected:
        LOG.warning("%s: pushed KV does not match the prompt; recomputing", req.internal_id)
        return KvLoad(reason="corrupt")
    return KvLoad(source="remote", reason="ok", tokens=len(req.prompt_ids))


async def _load_pool(engine: SimEngine, hashes: list[bytes], expected: bytes) -> KvLoad:
    """AscendStoreConnector on a prefill: leading blocks another instance put into the pool."""
    cfg = engine.config
    assert engine.pool is not None
    loaded, nbytes, reason = await asyncio.get_running_loop().run_in_executor(
        None, engine.pool.load, hashes, expected, cfg.block_size * cfg.kv_bytes_per_token)
    engine.metrics.inc("pd_sim_kv_bytes_received_total", nbytes, labels={"transport": "pool"})
    return KvLoad(source="pool" if loaded else "local", reason=reason, tokens=loaded * cfg.block_size)


def count_prompt(engine: SimEngine, prompt_len: int, local_hits: int, external: int, load: KvLoad) -> None:
    m = engine.metrics
    m.inc("vllm:prompt_tokens_total", prompt_len)
    m.inc("vllm:prefix_cache_queries_total", prompt_len)
    m.inc("vllm:prefix_cache_hits_total", local_hits)
    m.inc("vllm:prompt_tokens_by_source_total", prompt_len - local_hits - external, labels={"source": "local_compute"})
    m.inc("vllm:prompt_tokens_by_source_total", local_hits, labels={"source": "local_cache_hit"})
    m.inc("vllm:prompt_tokens_by_source_total", external, labels={"source": "external_kv_transfer"})
    if engine.config.protocol != "none" and engine.config.is_consumer:
        m.inc("vllm:external_prefix_cache_queries_total", prompt_len - local_hits)
        m.inc("vllm:external_prefix_cache_hits_total", external)


async def generate(engine: SimEngine, http: web.Request, req: Request, arrival: float):
    """Yield (position, token id) with the timing model; the first token ends the prefill."""
    digest = model.prompt_digest(req.prompt_ids)
    cut = engine.faults.error_mid_stream
    last = time.monotonic()
    for position in range(req.max_tokens):
        if position > 0 and engine.config.decode_step_ms > 0:
            await asyncio.sleep(engine.step_seconds())
            await engine.lane.join_step()  # a prefill chunk in the same step delays this token
        elif position % 64 == 63:
            await asyncio.sleep(0)  # zero-delay mode: let other requests run
        if cut is not None and position >= cut:
            engine.metrics.inc("pd_sim_faults_injected_total", labels={"fault": "error-mid-stream"})
            raise Abort()
        now = time.monotonic()
        if position == 0:
            req.first_token = now
            engine.metrics.observe("vllm:time_to_first_token_seconds", now - arrival)
            engine.metrics.observe("vllm:request_prefill_time_seconds", now - (req.admitted or arrival))
        else:
            engine.metrics.observe("vllm:inter_token_latency_seconds", now - last)
        last = now
        token = engine.token_at(req, digest, position)
        yield position, token
        if token == model.EOS_TOKEN_ID:
            return


def finish(engine: SimEngine, req: Request, tokens: list[int], arrival: float, expected: bytes) -> tuple[str, Any]:
    """Finish reason and the kv_transfer_params a prefill returns (per protocol)."""
    reason = "stop" if tokens and tokens[-1] == model.EOS_TOKEN_ID else "length"
    engine.metrics.inc("vllm:generation_tokens_total", len(tokens))
    engine.metrics.inc("vllm:request_success_total", labels={"finished_reason": reason})
    now = time.monotonic()
    engine.metrics.observe("vllm:e2e_request_latency_seconds", now - arrival)
    engine.metrics.observe("vllm:request_decode_time_seconds", now - (req.first_token or now))
    return reason, _producer_params(engine, req, reason, expected)


def _producer_params(engine: SimEngine, req: Request, reason: str, expected: bytes) -> dict | None:
    cfg = engine.config
    ktp = req.ktp
    if not (cfg.is_producer and ktp.get("do_remote_decode")) or cfg.protocol not in ("mooncake_v1", "nixl", "mooncake"):
        return None
    m = engine.metrics
    why = None
    if engine.faults.no_params:
        m.inc("pd_sim_faults_injected_total", labels={"fault": "no-params"})
        why = "fault"
    elif cfg.protocol in ("mooncake_v1", "mooncake") and reason != "length":
        why = "finished-stopped"  # only FINISHED_LENGTH_CAPPED hands KV over
    if cfg.protocol == "mooncake":
        transfer_id = str(ktp.get("transfer_id") or "")
        if not transfer_id:
            why = why or "no-transfer-id"
        _mark_transfer(engine, transfer_id, req, expected, why)
        m.inc("pd_sim_kv_params_withheld_total", labels={"reason": why or "push-protocol"})
        return None
    if why is not None:
        m.inc("pd_sim_kv_params_withheld_total", labels={"reason": why})
        return None
    item = engine.hold_kv(req.internal_id, req.prompt_ids, expected)
    m.inc("pd_sim_kv_params_returned_total")
    params: dict[str, Any] = {
        "do_remote_prefill": True, "do_remote_decode": False,
        "remote_block_ids": item.block_ids, "remote_engine_id": cfg.engine_id,
        "remote_host": cfg.advertise_host, "remote_port": engine.ports.get("side", cfg.port),
        "remote_request_id": req.internal_id,
    }
    if cfg.protocol == "mooncake_v1":
        params.update({"num_prompt_blocks": item.blocks, "remote_block_size": cfg.block_size,
                       "remote_pcp_size": 1, "remote_dcp_size": 1, "remote_ptp_size": cfg.tensor_parallel_size})
    else:
        params["tp_size"] = cfg.tensor_parallel_size
    return params


def _mark_transfer(engine: SimEngine, transfer_id: str, req: Request, expected: bytes, why: str | None) -> None:
    """Upstream mooncake: the prefill for ``transfer_id`` is done; wake a waiting decode."""
    if not transfer_id:
        return
    item = engine.held.items.get(transfer_id)
    if why is not None:
        if item is None:
            item = HeldKv(key=transfer_id, data=b"", checksum="", blocks=0, block_ids=[],
                          expires=time.monotonic() + engine.config.kv_hold_timeout_s)
            engine.held.put(item)
        item.failed = why
        item.ready.set()
        return
    fresh = engine.hold_kv(transfer_id, req.prompt_ids, expected)
    if item is not None:  # a decode was already waiting on the placeholder
        fresh.ready = item.ready
    fresh.ready.set()
