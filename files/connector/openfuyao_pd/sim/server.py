"""The simulator's HTTP server: OpenAI-compatible endpoints plus the PD side channels.

``build_app(SimConfig)`` returns an aiohttp Application; ``SimRunner`` starts/stops it on a
port (with the side-channel and bootstrap listeners the protocol needs). The engine state the
handlers share is ``SimEngine`` in sim/engine.py; a request's run on it (KV sourcing, prefill,
token generation, the prefill's kv_transfer_params) is in sim/execution.py. This module only
turns HTTP into those calls and their results into OpenAI-shaped answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd.sim import execution, kvpool, layerwise, model
from openfuyao_pd.sim.config import SimConfig
from openfuyao_pd.sim.engine import (
    ApiError,
    CapacityError,
    HeldKv,
    Request,
    SimEngine,
)
from openfuyao_pd.sim.faults import FaultError, parse_faults

__all__ = ["ENGINE_KEY", "SimConfig", "SimEngine", "SimRunner", "build_app"]

LOG = logging.getLogger("pd-engine-sim")


class Died(Exception):
    """The simulated engine crashed on purpose."""


def _error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": status},
            "object": "error", "message": message, "type": kind, "code": status}


ENGINE_KEY: web.AppKey[SimEngine] = web.AppKey("sim_engine", SimEngine)


# --------------------------------------------------------------------------------- handlers

def _engine(request: web.Request) -> SimEngine:
    return request.app[ENGINE_KEY]


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc


async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "completion")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "chat")


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response(_error_body(status, message, kind), status=status)


async def _apply_faults(engine: SimEngine, request: web.Request) -> web.Response | None:
    faults = engine.faults
    engine.requests_seen += 1
    if faults.die_after is not None and engine.requests_seen > faults.die_after:
        engine.metrics.inc("pd_sim_faults_injected_total", labels={"fault": "die"})
        engine.die()
        raise Died()
    if faults.hang:
        engine.metrics.inc("pd_sim_faults_injected_total", labels={"fault": "hang"})
        await asyncio.sleep(3600)
    if faults.delay_ms > 0:
        engine.metrics.inc("pd_sim_faults_injected_total", labels={"fault": "delay"})
        await asyncio.sleep(faults.delay_ms / 1000.0)
    if faults.fail or engine.dice.roll(faults.fail_rate):
        engine.metrics.inc("pd_sim_faults_injected_total", labels={"fault": "fail"})
        return _error(500, "simulated engine failure (fault injection)", "InternalServerError")
    return None


async def _serve(request: web.Request, kind: str) -> web.StreamResponse:
    engine = _engine(request)
    engine.metrics.inc("pd_sim_requests_total", labels={"endpoint": kind})
    req: Request | None = None
    try:
        failure = await _apply_faults(engine, request)
        if failure is not None:
            return failure
        req = engine.parse(kind, await _json_body(request), request.headers)
        return await _run(engine, request, req)
    except (Died, execution.Abort):
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)
    except ConnectionResetError:  # the client went away mid-stream (aiohttp's ClientConnectionResetError)
        engine.metrics.inc("pd_sim_requests_aborted_total")
        return web.Response(status=499)
    except ApiError as exc:
        if req is None:
            try:
                body = await request.json()
                ktp = body.get("kv_transfer_params") if isinstance(body, dict) else None
                if isinstance(ktp, dict):
                    await engine.release_remote(ktp)
            except (ValueError, aiohttp.ClientError):
                pass
        return _error(exc.status, str(exc), exc.kind)
    except CapacityError as exc:
        if req is not None:
            await engine.release_remote(req.ktp)
        return _error(400, str(exc))


async def _run(engine: SimEngine, http: web.Request, req: Request) -> web.StreamResponse:
    cfg = engine.config
    arrival = time.monotonic()
    prompt_len = len(req.prompt_ids)
    hashes = model.block_hashes(req.prompt_ids, cfg.block_size, cfg.model_tag)
    blocks = math.ceil((prompt_len + req.max_tokens) / cfg.block_size)
    try:
        await engine.scheduler.admit(blocks, req.priority)
    except asyncio.CancelledError:
        engine.forget_remote(req.ktp)
        raise
    admitted = req.admitted = time.monotonic()
    engine.metrics.observe("vllm:request_queue_time_seconds", admitted - arrival)
    finished = kv_settled = False
    try:
        load, local_hits, expected, need_kv = await execution.source_kv(engine, req, hashes)
        kv_settled = True
        external = max(0, min(load.tokens, prompt_len - 1) - local_hits) if load.source != "local" else 0
        computed = prompt_len - local_hits - external
        engine.metrics.inc("pd_sim_kv_loads_total", labels={"source": load.source, "reason": load.reason})
        execution.count_prompt(engine, prompt_len, local_hits, external, load)
        await execution.prefill(engine, req, hashes, computed, expected, need_kv)

        headers = {"x-sim-kv-source": load.source, "x-sim-kv-reason": load.reason,
                   "x-sim-kv-tokens": str(external), "x-sim-engine-id": str(cfg.engine_id),
                   "X-Request-Id": req.base_id}
        cached = local_hits + external
        if req.stream:
            response = await _stream(engine, http, req, headers, arrival, cached, expected)
        else:
            response = await _complete(engine, http, req, headers, arrival, cached, expected)
        finished = True
        return response
    finally:
        engine.scheduler.release(blocks)
        if not kv_settled:
            engine.forget_remote(req.ktp)
        if not finished:
            engine.metrics.inc("pd_sim_requests_aborted_total")


def _usage(req: Request, n_tokens: int, cached: int) -> dict:
    return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": n_tokens,
            "total_tokens": len(req.prompt_ids) + n_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _text(tokens: list[int]) -> str:
    return "".join(model.token_text(t) for t in tokens)


async def _complete(engine: SimEngine, http: web.Request, req: Request, headers: dict, arrival: float,
                    cached: int, expected: bytes) -> web.Response:
    tokens = [token async for _, token in execution.generate(engine, http, req, arrival)]
    reason, params = execution.finish(engine, req, tokens, arrival, expected)
    text = _text(tokens)
    if req.kind == "completion":
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                                  "stop_reason": None, "prompt_logprobs": None}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                  "logprobs": None, "finish_reason": reason, "stop_reason": None}
        obj = "chat.completion"
    if req.return_token_ids:
        choice["token_ids"] = tokens
        choice["prompt_token_ids"] = req.prompt_ids
    body = {"id": req.external_id, "object": obj, "created": req.created, "model": req.echo_model,
            "choices": [choice], "usage": _usage(req, len(tokens), cached), "kv_transfer_params": params}
    return web.json_response(body, headers=headers)


async def _stream(engine: SimEngine, http: web.Request, req: Request, headers: dict, arrival: float,
                  cached: int, expected: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(http)
    obj = "text_completion" if req.kind == "completion" else "chat.completion.chunk"

    def chunk(choice: dict) -> bytes:
        body = {"id": req.external_id, "object": obj, "created": req.created, "model": req.echo_model,
                "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n".encode()

    if req.kind == "chat":
        await response.write(chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}))
    tokens: list[int] = []
    async for position, token in execution.generate(engine, http, req, arrival):
        tokens.append(token)
        last = token == model.EOS_TOKEN_ID or position == req.max_tokens - 1
        reason = None
        if last:
            reason = "stop" if token == model.EOS_TOKEN_ID else "length"
        text = model.token_text(token)
        if req.kind == "completion":
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                                      "stop_reason": None}
        else:
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}
        if req.return_token_ids:
            choice["token_ids"] = [token]
            if position == 0:
                choice["prompt_token_ids"] = req.prompt_ids
        await response.write(chunk(choice))
    execution.finish(engine, req, tokens, arrival, expected)
    if req.include_usage:
        usage = {"id": req.external_id, "object": obj, "created": req.created, "model": req.echo_model,
                 "choices": [], "usage": _usage(req, len(tokens), cached)}
        await response.write(f"data: {json.dumps(usage)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# ------------------------------------------------------------------------ plain endpoints

async def health(request: web.Request) -> web.Response:
    engine = _engine(request)
    if engine.faults.unhealthy or engine.dead:
        return web.Response(status=503, text="simulated unhealthy engine")
    return web.Response(status=200)


async def models(request: web.Request) -> web.Response:
    cfg = _engine(request).config
    return web.json_response({"object": "list", "data": [{
        "id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
        "root": cfg.model, "parent": None, "max_model_len": cfg.max_model_len, "permission": []}]})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=_engine(request).metrics.render(), content_type="text/plain", charset="utf-8")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": "pd-engine-sim"})


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_engine(request).faults.as_json())


async def set_faults(request: web.Request) -> web.Response:
    """Replace the active faults: ``{"faults": ["fail", "delay:100"]}`` (``[]`` clears them)."""
    engine = _engine(request)
    try:
        body = await request.json()
        specs = body.get("faults") if isinstance(body, dict) else None
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise FaultError('body must be {"faults": ["fail", "delay:100", ...]}')
        engine.faults = parse_faults(specs)
    except (FaultError, ValueError) as exc:
        return _error(400, str(exc))
    engine.requests_seen = 0
    return web.json_response(engine.faults.as_json())


async def die_now(request: web.Request) -> web.Response:
    engine = _engine(request)
    asyncio.get_running_loop().call_later(0.05, engine.die)
    return web.json_response({"status": "dying"})


async def sim_state(request: web.Request) -> web.Response:
    """Introspection for tests: role, protocol, ports, held KV, scheduler counters."""
    engine = _engine(request)
    cfg = engine.config
    return web.json_response({
        "engine_id": cfg.engine_id, "protocol": cfg.protocol, "kv_role": cfg.kv_role, "ports": engine.ports,
        "kv_pool": ("mooncake-store" if isinstance(engine.pool, kvpool.MooncakePool)
                    else "directory" if engine.pool is not None else None),
        "mooncake": engine.mooncake.segment if engine.mooncake else None, "mooncake_reason": engine.mooncake_reason,
        "running": engine.scheduler.running, "waiting": engine.scheduler.waiting,
        "prefill_busy": engine.lane.busy, "prefill_waiting": engine.lane.waiting,
        "used_blocks": engine.scheduler.used_blocks, "held_blocks": engine.held.held_blocks,
        "held_requests": sorted(engine.held.items), "freed": engine.held.freed})


# ---------------------------------------------------------------- side channel (producer)

async def kv_describe(request: web.Request) -> web.Response:
    engine = _engine(request)
    item = engine.held.items.get(request.match_info["key"])
    if item is None:
        return _error(404, f"no KV held for {request.match_info['key']}", "NotFoundError")
    return web.json_response(engine.kv_descriptor(item))


async def kv_data(request: web.Request) -> web.Response:
    engine = _engine(request)
    item = engine.held.items.get(request.match_info["key"])
    if item is None:
        return _error(404, f"no KV held for {request.match_info['key']}", "NotFoundError")
    item.served_http = True
    engine.metrics.inc("pd_sim_kv_bytes_sent_total", len(item.data), labels={"transport": "http"})
    return web.Response(body=item.data, content_type="application/octet-stream")


async def kv_done(request: web.Request) -> web.Response:
    engine = _engine(request)
    item = engine._free_held(request.match_info["key"], "pulled")
    if item is None:
        return _error(404, f"no KV held for {request.match_info['key']}", "NotFoundError")
    if item.region is not None and not item.served_http:  # D read it through Mooncake; account it here
        engine.metrics.inc("pd_sim_kv_bytes_sent_total", len(item.data), labels={"transport": "mooncake"})
    return web.json_response({"status": "freed", "blocks": item.blocks})


async def bootstrap_query(request: web.Request) -> web.Response:
    """Upstream MooncakeConnector bootstrap server: ``{dp_rank: {"engine_id": ...}}``."""
    cfg = _engine(request).config
    return web.json_response({str(rank): {"engine_id": cfg.engine_id if cfg.data_parallel_size == 1
                                          else f"{cfg.engine_id}_dp{rank}"}
                              for rank in range(cfg.data_parallel_size)})


async def xfer_push(request: web.Request) -> web.Response:
    """Upstream mooncake: a decode waits here until the prefill of ``transfer_id`` is done, then
    the prefill writes the KV into the decode's registered buffer (or returns it over HTTP)."""
    engine = _engine(request)
    key = request.match_info["transfer_id"]
    want = await request.json()
    item = engine.held.items.get(key)
    if item is None:  # the decode arrived first: wait on a placeholder
        item = HeldKv(key=key, data=b"", checksum="", blocks=0, block_ids=[],
                      expires=time.monotonic() + engine.config.kv_hold_timeout_s)
        engine.held.put(item)
    ready = item.ready
    try:
        await asyncio.wait_for(ready.wait(), engine.config.kv_transfer_timeout_s)
    except TimeoutError:
        engine._free_held(key, "timeout")
        return web.json_response({"reason": "timeout"}, status=410)
    item = engine.held.items.get(key)
    if item is None or item.failed:
        reason = item.failed if item is not None else "unprocessed"
        engine._free_held(key, "rejected")
        return web.json_response({"reason": reason}, status=410)
    try:
        length = min(len(item.data), int(want.get("length") or 0)) if want.get("segment") else len(item.data)
        if want.get("segment") and item.region is not None and engine.mooncake is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, engine.mooncake.write, want["segment"], item.region, int(want["address"]), length)
            engine.metrics.inc("pd_sim_kv_bytes_sent_total", length, labels={"transport": "mooncake"})
            return web.json_response({"status": "ok", "length": length, "checksum": item.checksum})
        engine.metrics.inc("pd_sim_kv_bytes_sent_total", len(item.data), labels={"transport": "http"})
        return web.Response(body=item.data, content_type="application/octet-stream")
    finally:
        engine._free_held(key, "pulled")


# ------------------------------------------------------------------------------- assembly

@web.middleware
async def _errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    key = request.app[ENGINE_KEY].config.api_key
    if key and request.path.startswith("/v1") and request.headers.get("Authorization") != f"Bearer {key}":
        return web.json_response({"error": "Unauthorized"}, status=401)
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, str(exc), exc.kind)


def build_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp Application (the engine is ``app[ENGINE_KEY]``)."""
    engine = SimEngine(config)
    engine.setup_mooncake()
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024 * 1024)
    app[ENGINE_KEY] = engine
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/version", version)
    app.router.add_get("/sim/faults", get_faults)
    app.router.add_post("/sim/faults", set_faults)
    app.router.add_post("/sim/die", die_now)
    app.router.add_get("/sim/state", sim_state)
    app.router.add_get("/sim/kv/{key}", kv_describe)
    app.router.add_get("/sim/kv/{key}/data", kv_data)
    app.router.add_post("/sim/kv/{key}/done", kv_done)
    app.router.add_get("/query", bootstrap_query)
    app.router.add_post("/sim/xfer/{transfer_id}", xfer_push)
    app.router.add_put("/sim/layerwise/{key}/{layer}", layerwise.landing_put)
    app.on_startup.append(engine.start)
    app.on_cleanup.append(engine.stop)
    return app


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


class SimRunner:
    """Start/stop one simulator on ``config.port`` (0 = any free port) inside a running loop.

    Also binds the side-channel port (``kv_port``) and, for upstream mooncake producers, the
    bootstrap port, when they are set and differ from the HTTP port (0 = any free port).
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.app = build_app(config)
        self.engine = self.app[ENGINE_KEY]
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        self.sites: list[web.TCPSite] = []
        self.port = 0
        self.stopped = asyncio.Event()

    @property
    def url(self) -> str:
        host = self.engine.config.advertise_host or "127.0.0.1"
        return self.engine._peer_url(host, self.port)

    async def _site(self, port: int) -> int:
        # backlog like uvicorn's 2048 (vLLM's server): bursts of hundreds of connections are normal there
        site = web.TCPSite(self.runner, self.config.host, port, reuse_address=True, backlog=2048)
        await site.start()
        self.sites.append(site)
        return _bound_port(site)

    async def start(self) -> SimRunner:
        await self.runner.setup()
        self.port = await self._site(self.config.port)
        ports = {"http": self.port}
        for name, port in (("side", self.config.kv_port), ("bootstrap", self.config.bootstrap_port)):
            if port is not None and (port == 0 or port != self.config.port):  # 0: its own free port
                ports[name] = await self._site(port)
        self.engine.ports = ports
        self.engine.on_die = self._die
        return self

    def _die(self) -> None:
        """In-process death: drop every connection and stop listening, like a crashed engine."""
        asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        for site in self.sites:
            server = site._server
            if server is not None:
                server.close()
        server = self.runner.server
        if server is not None:
            for proto in list(getattr(server, "connections", [])):
                transport = getattr(proto, "transport", None)
                if transport is not None:
                    transport.abort()
        await self.runner.cleanup()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for configs that need the number up front)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

