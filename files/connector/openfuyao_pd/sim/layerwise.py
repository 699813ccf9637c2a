"""The simulator's side of vllm-ascend MooncakeLayerwiseConnector (pd-proxies.md §0.3).

Decode: a request with ``kv_transfer_params.metaserver`` allocates its blocks (a landing buffer,
registered with Mooncake when the process has it), POSTs where they are to the metaserver, and
waits: the metaserver answers once the prefill has pushed every layer into the buffer. Prefill: a
request with ``do_remote_decode`` and the decode's ``remote_host``/``remote_port`` pushes its KV
layer by layer (Mooncake writes into the decode's buffer, or HTTP PUTs of each layer) before it
answers. The bytes pushed are the deterministic KV of the prompt, so the decode checks them.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

LAYERS = 2  # the tiny Llama's layers: one push per layer


@dataclass
class Landing:
    """A decode's blocks waiting for a layerwise push."""

    length: int
    buffer: bytearray
    region: Any = None  # kvxfer.Region when Mooncake writes into it
    layers: set[int] = field(default_factory=set)
    transport: str = "http"


def layer_slices(length: int, layers: int = LAYERS) -> list[tuple[int, int]]:
    """(offset, size) of each layer's share of the KV bytes."""
    size = math.ceil(length / layers) if length else 0
    return [(o, min(size, length - o)) for o in range(0, length, size)] if size else []


def metaserver_params(engine: Any, req: Any, block_ids: list[int], landing: Landing) -> dict[str, Any]:
    """What a layerwise decode posts to the metaserver (mooncake_layerwise_connector.py fields)."""
    cfg = engine.config
    params: dict[str, Any] = {
        "token_ids": [], "request_id": req.external_id, "do_remote_prefill": False, "do_remote_decode": True,
        "remote_block_ids": block_ids, "remote_block_size": cfg.block_size, "remote_engine_id": cfg.engine_id,
        "remote_host": cfg.advertise_host, "remote_port": engine.ports.get("side", cfg.port),
        "remote_tp_size": cfg.tensor_parallel_size, "remote_pcp_size": 1, "remote_dcp_size": 1,
        "remote_cached_tokens": 0,
    }
    if landing.region is not None:
        params.update({"remote_segment": engine.mooncake.segment, "remote_address": landing.region.address})
    return params


async def receive(engine: Any, req: Any, expected: bytes) -> tuple[bytes | None, str, str]:
    """Decode side: (bytes pushed or None, transport, reason)."""
    ktp = req.ktp
    url = ktp.get("metaserver")
    if not ktp.get("do_remote_prefill") or not isinstance(url, str) or not url:
        return None, "none", "no-kv-params"
    length = len(expected)
    landing = Landing(length=length, buffer=bytearray(length))
    if engine.mooncake is not None and length:
        landing.region = engine.mooncake.register(length)
    blocks = math.ceil(len(req.prompt_ids) / engine.config.block_size)
    engine.landings[req.external_id] = landing
    try:
        params = metaserver_params(engine, req, engine.held.new_block_ids(blocks), landing)
        async with engine.session.post(url, json=params) as resp:
            await resp.read()
            if resp.status != 200:
                return None, "none", f"metaserver-{resp.status}"
        if landing.region is not None and landing.transport == "mooncake":
            data = engine.mooncake.read_region(landing.region)
        else:
            data = bytes(landing.buffer)
        if len(landing.layers) != len(layer_slices(length)):
            return None, landing.transport, "incomplete-push"
        return data, landing.transport, "ok"
    finally:
        engine.landings.pop(req.external_id, None)
        if landing.region is not None:
            engine.mooncake.unregister(landing.region)


async def push(engine: Any, req: Any, data: bytes) -> str:
    """Prefill side: push every layer into the decode's blocks; the reason is "ok" when all landed."""
    ktp = req.ktp
    missing = [k for k in ("request_id", "remote_host", "remote_port", "remote_block_ids") if not ktp.get(k)]
    if missing:
        engine.metrics.inc("pd_sim_kv_params_withheld_total", labels={"reason": "incomplete-params"})
        return "incomplete-params"
    base = engine._peer_url(ktp["remote_host"], ktp["remote_port"])
    key = str(ktp["request_id"])
    segment, address = ktp.get("remote_segment"), ktp.get("remote_address")
    loop = asyncio.get_running_loop()
    for layer, (offset, size) in enumerate(layer_slices(len(data))):
        piece = data[offset:offset + size]
        if engine.mooncake is not None and segment and address is not None:
            region = engine.mooncake.register(piece)
            try:
                await loop.run_in_executor(None, engine.mooncake.write, segment, region, int(address) + offset, size)
            finally:
                engine.mooncake.unregister(region)
            transport, body = "mooncake", b""
        else:
            transport, body = "http", piece
        async with engine.session.put(f"{base}/sim/layerwise/{key}/{layer}", data=body,
                                      params={"offset": str(offset), "transport": transport}) as resp:
            await resp.read()
            if resp.status != 200:
                return f"push-{resp.status}"
        engine.metrics.inc("pd_sim_kv_bytes_sent_total", size, labels={"transport": transport})
    return "ok"


async def landing_put(request: web.Request) -> web.Response:
    """Decode side channel: one layer arrived (its bytes, or a note that Mooncake wrote them)."""
    from openfuyao_pd.sim.server import ENGINE_KEY

    engine = request.app[ENGINE_KEY]
    landing = engine.landings.get(request.match_info["key"])
    if landing is None:
        return web.json_response({"error": "no blocks waiting for this request"}, status=404)
    layer = int(request.match_info["layer"])
    offset = int(request.query.get("offset", "0"))
    body = await request.read()
    if request.query.get("transport") == "mooncake":
        landing.transport = "mooncake"
    else:
        landing.buffer[offset:offset + len(body)] = body
    landing.layers.add(layer)
    size = len(body) if body else (layer_slices(landing.length)[layer][1] if layer < LAYERS else 0)
    engine.metrics.inc("pd_sim_kv_bytes_received_total", size, labels={"transport": landing.transport})
    return web.json_response({"status": "ok"})


__all__ = ["LAYERS", "Landing", "landing_put", "layer_slices", "push", "receive"]
