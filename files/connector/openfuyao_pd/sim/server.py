"""The simulator's HTTP server: OpenAI-compatible endpoints plus the PD side channels.

``build_app(SimConfig)`` returns an aiohttp Application; ``SimRunner`` starts/stops it on a
port (with the side-channel and bootstrap listeners the protocol needs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd import kvxfer
from openfuyao_pd.sim import kvpool, layerwise, model
from openfuyao_pd.sim.config import SimConfig
from openfuyao_pd.sim.engine import (
    CapacityError,
    ComputeLane,
    HeldKv,
    HeldStore,
    PrefixCache,
    Scheduler,
    SharedKvStore,
)
from openfuyao_pd.sim.faults import FailDice, FaultError, parse_faults
from openfuyao_pd.sim.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, Registry

__all__ = ["ENGINE_KEY", "SimConfig", "SimRunner", "build_app"]

LOG = logging.getLogger("pd-engine-sim")

# Fields a decode instance needs before it uses a prefill's KV (pd-proxies.md §0.2, §0.4, §0.5).
REQUIRED_PARAMS = {
    "mooncake_v1": ("remote_engine_id", "remote_host", "remote_port", "remote_request_id"),
    "nixl": ("remote_engine_id", "remote_request_id", "remote_host", "remote_port"),
    "mooncake": ("remote_engine_id", "remote_bootstrap_addr", "transfer_id"),
}


class ApiError(Exception):
    """An OpenAI-style error answer."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class Died(Exception):
    """The simulated engine crashed on purpose."""


@dataclass
class KvLoad:
    """How a request's prompt KV was obtained."""

    source: str = "local"  # remote | shared | local
    reason: str = "no-kv-params"
    tokens: int = 0  # prompt tokens whose KV came from outside
    release: Callable[[], Any] | None = None  # tell the producer we are done


@dataclass
class Request:
    kind: str  # completion | chat
    external_id: str
    internal_id: str
    prompt_ids: list[int]
    max_tokens: int
    min_tokens: int
    stream: bool
    include_usage: bool
    ignore_eos: bool
    eos_at: int | None
    seed: int
    priority: int
    return_token_ids: bool
    ktp: dict[str, Any]
    echo_model: str
    base_id: str = ""
    admitted: float = 0.0
    first_token: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))


def _error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": status},
            "object": "error", "message": message, "type": kind, "code": status}


def _int_field(body: dict, name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {value!r}")
    return value


class SimEngine:
    """One simulated vLLM engine (state shared by all handlers)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.faults = parse_faults(config.faults)
        self.dice = FailDice(config.seed)
        self.scheduler = Scheduler(config.max_num_seqs, config.kv_capacity_blocks, config.scheduling_policy)
        self.lane = ComputeLane(config.scheduling_policy)
        self.prefix_cache = PrefixCache(config.kv_capacity_blocks, config.enable_prefix_caching)
        self.held = HeldStore(self.scheduler, config.kv_hold_timeout_s)
        self.shared = (SharedKvStore(config.shared_storage_path, config.model_tag, config.is_producer)
                       if config.protocol == "centralized" and config.shared_storage_path else None)
        self.pool: Any = None
        if config.kv_pool and config.kv_pool_master and not config.kv_pool_path:
            self.pool = kvpool.MooncakePool(config.kv_pool_master, config.advertise_host or "127.0.0.1",
                                            config.model_tag)
        elif config.kv_pool:
            self.pool = SharedKvStore(config.kv_pool_path, config.model_tag, True)
        self.landings: dict[str, layerwise.Landing] = {}  # layerwise decode: blocks waiting for a push
        self.requests_seen = 0
        self.on_die: Callable[[], None] | None = None
        self.dead = False
        self.mooncake: kvxfer.MooncakeTcp | None = None
        self.mooncake_reason: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ports: dict[str, int] = {}
        self._sweeper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.metrics = self._build_metrics()
        if config.kv_bytes_per_token > 0:  # build the KV byte pool now, not on the first request
            model.kv_content([0], config.kv_bytes_per_token, config.model_tag, config.block_size)

    # ----------------------------------------------------------------- lifecycle
    def setup_mooncake(self) -> None:
        """Create (or reuse) the process's Mooncake TCP engine according to --sim-mooncake."""
        mode = self.config.mooncake
        if mode == "off" or self.config.protocol not in ("mooncake_v1", "nixl", "mooncake", "mooncake_layerwise"):
            self.mooncake_reason = "disabled" if mode == "off" else "protocol has no P2P transfer"
            return
        reason = kvxfer.unavailable_reason()
        if reason is None:
            try:
                self.mooncake = kvxfer.shared_engine(self.config.advertise_host or "127.0.0.1")
            except kvxfer.KvTransferError as exc:
                reason = str(exc)
        self.mooncake_reason = reason
        if reason and mode == "on":
            raise RuntimeError(f"--sim-mooncake on but {reason}")
        if reason:
            LOG.info("KV moves over HTTP: %s", reason)

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.kv_transfer_timeout_s))
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self, app: web.Application) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        if self.session:
            await self.session.close()
        for key in list(self.held.items):
            self._free_held(key, "rejected")
        if isinstance(self.pool, kvpool.MooncakePool):
            self.pool.close()

    async def _sweep(self) -> None:
        interval = min(1.0, max(0.05, self.config.kv_hold_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            for key in self.held.expired():
                LOG.warning("freeing KV of %s: no decode fetched it within %.0fs", key, self.config.kv_hold_timeout_s)
                self._free_held(key, "timeout")

    def _free_held(self, key: str, reason: str) -> HeldKv | None:
        item = self.held.pop(key, reason)
        if item is not None:
            if not item.ready.is_set():
                item.failed = item.failed or reason
                item.ready.set()
            if item.region is not None and self.mooncake is not None:
                self.mooncake.unregister(item.region)
            self.metrics.inc("pd_sim_kv_held_freed_total", labels={"reason": reason})
        return item

    def die(self) -> None:
        self.dead = True
        LOG.error("simulated engine death (fault)")
        if not self.config.in_process:
            os._exit(1)
        if self.on_die:
            self.on_die()

    # ----------------------------------------------------------------- metrics
    def _build_metrics(self) -> Registry:
        reg = Registry({"model_name": self.config.model_name, "engine": "0"})
        reg.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                  lambda: self.scheduler.running)
        reg.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                  lambda: self.scheduler.waiting)
        reg.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                  lambda: max(self.faults.stuck_kv,
                              (self.scheduler.used_blocks + self.scheduler.held_blocks) / self.scheduler.capacity))
        reg.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.")
        reg.counter("vllm:generation_tokens_total", "Number of generation tokens processed.")
        reg.counter("vllm:prompt_tokens_by_source_total", "Number of prompt tokens by source.")
        reg.counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.")
        reg.counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.")
        reg.counter("vllm:external_prefix_cache_queries_total",
                    "External prefix cache queries from KV connector, in terms of number of queried tokens.")
        reg.counter("vllm:external_prefix_cache_hits_total",
                    "External prefix cache hits from KV connector, in terms of number of cached tokens.")
        reg.counter("vllm:request_success_total", "Count of successfully processed requests.")
        reg.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        reg.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", TTFT_BUCKETS)
        reg.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                      LATENCY_BUCKETS)
        reg.histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                      LATENCY_BUCKETS)
        reg.histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                      LATENCY_BUCKETS)
        reg.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                      LATENCY_BUCKETS)
        reg.gauge("pd_sim_kv_held_blocks", "KV blocks a prefill holds for decode instances to fetch.",
                  lambda: self.held.held_blocks)
        reg.gauge("pd_sim_kv_held_requests", "Finished prefills whose KV is still held.",
                  lambda: len(self.held.items))
        reg.counter("pd_sim_kv_held_freed_total", "Held KV released, by reason (pulled, timeout, rejected).")
        reg.counter("pd_sim_kv_bytes_sent_total", "KV bytes served to decode instances, by transport.")
        reg.counter("pd_sim_kv_bytes_received_total", "KV bytes received from prefill instances, by transport.")
        reg.counter("pd_sim_kv_loads_total", "How prompts' KV was obtained, by source and reason.")
        reg.counter("pd_sim_kv_params_returned_total", "Prefill answers carrying kv_transfer_params.")
        reg.counter("pd_sim_kv_params_withheld_total", "Prefill answers without kv_transfer_params, by reason.")
        reg.counter("pd_sim_kv_pushes_total", "Layerwise prefills' pushes into a decode's blocks, by outcome.")
        reg.counter("pd_sim_requests_total", "Completion requests received, by endpoint.")
        reg.counter("pd_sim_requests_aborted_total", "Requests aborted before they finished (client gone).")
        reg.counter("pd_sim_faults_injected_total", "Faults injected, by fault.")
        reg.counter("pd_sim_kv_store_errors_total", "Shared-storage KV blocks that could not be written.",
                    lambda: self.shared.errors if self.shared is not None else 0)
        reg.gauge("pd_sim_mooncake_enabled", "1 when KV moves through the Mooncake TCP transfer engine.",
                  lambda: 1 if self.mooncake is not None else 0)
        return reg

    # ----------------------------------------------------------------- request parsing
    def parse(self, kind: str, body: Any, headers: Any) -> Request:
        cfg = self.config
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        name = body.get("model")
        if name is not None and name not in (cfg.model_name, cfg.model):
            raise ApiError(404, f"The model `{name}` does not exist.", "NotFoundError")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "messages must be a non-empty list")
            prompt_ids = model.tokenize(model.render_chat(messages))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]
            if isinstance(prompt, str):
                prompt_ids = model.tokenize(prompt)
            elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                prompt_ids = list(prompt)
            else:
                raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request)")
        if not prompt_ids:
            raise ApiError(400, "The prompt cannot be empty")
        max_tokens = _int_field(body, "max_tokens", None)
        if kind == "chat":
            max_tokens = _int_field(body, "max_completion_tokens", max_tokens)
        if max_tokens is None:
            max_tokens = 16 if kind == "completion" else cfg.max_model_len - len(prompt_ids)
        min_tokens = _int_field(body, "min_tokens", 0) or 0
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.")
        if len(prompt_ids) + max_tokens > cfg.max_model_len:
            raise ApiError(400, f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
                                f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the "
                                f"messages, {max_tokens} in the completion). Please reduce the length.")
        if min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens ({min_tokens}) must be less than or equal to max_tokens ({max_tokens})")
        priority = _int_field(body, "priority", 0) or 0
        if priority != 0 and cfg.scheduling_policy != "priority":
            raise ApiError(400, f"Got priority {priority} but Priority scheduling is not enabled.")
        ktp = body.get("kv_transfer_params") or {}
        if not isinstance(ktp, dict):
            raise ApiError(400, "kv_transfer_params must be an object")
        base = headers.get("X-Request-Id") or uuid.uuid4().hex
        external = f"cmpl-{base}-0" if kind == "completion" else f"chatcmpl-{base}"
        stream_options = body.get("stream_options") or {}
        seed = _int_field(body, "seed", None)
        eos_at = _int_field(body, "sim_eos_at", None)
        return Request(
            kind=kind, external_id=external, internal_id=f"{external}-{uuid.uuid4().hex[:8]}",
            prompt_ids=prompt_ids, max_tokens=max_tokens, min_tokens=min_tokens,
            stream=bool(body.get("stream")), include_usage=bool(stream_options.get("include_usage")),
            ignore_eos=bool(body.get("ignore_eos")), eos_at=eos_at,
            seed=cfg.seed if seed is None else seed, priority=priority,
            return_token_ids=bool(body.get("return_token_ids")), ktp=ktp,
            echo_model=name or cfg.model_name, base_id=base)

    # ----------------------------------------------------------------- generation
    def token_at(self, req: Request, digest: bytes, position: int) -> int:
        """The token at ``position``: EOS where the request or --sim-eos-rate says, else a word."""
        eos_allowed = not req.ignore_eos and position >= req.min_tokens
        if eos_allowed and req.eos_at is not None and position >= req.eos_at:
            return model.EOS_TOKEN_ID
        token = model.generate_token(digest, req.seed, position)
        if eos_allowed and self.config.eos_rate > 0:
            roll = model.generate_token(digest, req.seed ^ 0x5EED, position) / model.VOCAB_SIZE
            if roll < self.config.eos_rate:
                return model.EOS_TOKEN_ID
        return token

    def step_seconds(self) -> float:
        cfg = self.config
        return cfg.decode_step_ms / 1000.0 * (1.0 + cfg.decode_step_growth * max(0, self.scheduler.running - 1))

    # ----------------------------------------------------------------- KV: producer side
    def hold_kv(self, key: str, prompt_ids: list[int], kv: bytes) -> HeldKv:
        blocks = math.ceil(len(prompt_ids) / self.config.block_size)
        data = kv
        if self.faults.corrupt_kv and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.metrics.inc("pd_sim_faults_injected_total", labels={"fault": "corrupt-kv"})
        item = HeldKv(key=key, data=data, checksum=model.checksum(data), blocks=blocks,
                      block_ids=self.held.new_block_ids(blocks),
                      expires=time.monotonic() + self.config.kv_hold_timeout_s)
        if self.mooncake is not None and data:
            item.region = self.mooncake.register(data)
        self.held.put(item)
        return item

    def kv_descriptor(self, item: HeldKv) -> dict:
        return {"engine_id": self.config.engine_id, "length": len(item.data), "checksum": item.checksum,
                "num_blocks": item.blocks, "segment": self.mooncake.segment if self.mooncake else None,
                "address": item.region.address if item.region is not None else None}

    # ----------------------------------------------------------------- KV: consumer side
    def _peer_url(self, host: str, port: Any) -> str:
        host = str(host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    async def _receive(self, desc: dict, fetch_http: Callable[[], Any]) -> tuple[bytes, str]:
        """Pull bytes described by a producer descriptor: Mooncake when both sides have it, else HTTP."""
        length = int(desc.get("length") or 0)
        if self.mooncake is not None and desc.get("segment") and desc.get("address") is not None and length:
            region = self.mooncake.register(length)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.mooncake.read, desc["segment"], region, int(desc["address"]), length)
                return self.mooncake.read_region(region), "mooncake"
            finally:
                self.mooncake.unregister(region)
        return await fetch_http(), "http"

    async def load_remote(self, req: Request, expected: bytes) -> KvLoad:
        """Decode side of the P2P protocols: fetch the prefill's KV and check it."""
        ktp = req.ktp
        protocol = self.config.protocol
        if not ktp.get("do_remote_prefill"):
            return KvLoad(reason="no-kv-params")
        missing = [name for name in REQUIRED_PARAMS.get(protocol, ()) if ktp.get(name) in (None, "")]
        if protocol in ("mooncake_v1", "nixl") and not ktp.get("remote_block_ids"):
            missing.append("remote_block_ids")
        if missing:
            LOG.warning("%s: kv_transfer_params lack %s; recomputing the prompt", req.internal_id, ", ".join(missing))
            return KvLoad(reason="incomplete-params")
        try:
            if protocol == "mooncake":
                data, transport = await self._pull_pushed(req)
            else:
                data, transport = await self._pull(req)
        except asyncio.CancelledError:
            raise
        except _KvMiss as exc:
            return KvLoad(reason=str(exc))
        except Exception as exc:  # network errors, Mooncake errors, timeouts
            LOG.warning("%s: KV fetch failed (%s: %s); recomputing", req.internal_id, type(exc).__name__, exc)
            return KvLoad(reason="fetch-failed")
        self.metrics.inc("pd_sim_kv_bytes_received_total", len(data), labels={"transport": transport})
        if data != expected:
            LOG.warning("%s: received KV does not match the prompt (checksum %s); recomputing",
                        req.internal_id, model.checksum(data)[:12])
            return KvLoad(reason="corrupt")
        return KvLoad(source="remote", reason="ok", tokens=len(req.prompt_ids))

    async def _pull(self, req: Request) -> tuple[bytes, str]:
        """mooncake_v1 / nixl: ask P's side channel for the blocks, read them, tell P we are done."""
        ktp = req.ktp
        assert self.session is not None
        base = self._peer_url(ktp["remote_host"], ktp["remote_port"])
        key = str(ktp["remote_request_id"])
        async with self.session.get(f"{base}/sim/kv/{key}") as resp:
            if resp.status == 404:
                raise _KvMiss("not-found")
            resp.raise_for_status()
            desc = await resp.json()
        if str(desc.get("engine_id")) != str(ktp["remote_engine_id"]):
            raise _KvMiss("engine-mismatch")
        if len(ktp.get("remote_block_ids") or []) != desc.get("num_blocks"):
            raise _KvMiss("block-mismatch")

        async def fetch_http() -> bytes:
            async with self.session.get(f"{base}/sim/kv/{key}/data") as data_resp:  # type: ignore[union-attr]
                data_resp.raise_for_status()
                return await data_resp.read()

        try:
            return await self._receive(desc, fetch_http)
        finally:
            await self._notify_done(base, key)

    async def _notify_done(self, base: str, key: str) -> None:
        try:  # short: a rejected request must not wait for an unreachable prefill
            async with self.session.post(f"{base}/sim/kv/{key}/done",  # type: ignore[union-attr]
                                         timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                await resp.read()
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            LOG.warning("could not tell %s that KV %s was consumed: %s", base, key, exc or type(exc).__name__)

    async def _pull_pushed(self, req: Request) -> tuple[bytes, str]:
        """Upstream mooncake: check the bootstrap server, then let P push into our buffer."""
        ktp = req.ktp
        assert self.session is not None
        base = str(ktp["remote_bootstrap_addr"]).rstrip("/")
        async with self.session.get(f"{base}/query") as resp:
            resp.raise_for_status()
            ranks = await resp.json()
        engine_ids = {str(v.get("engine_id")) for v in ranks.values() if isinstance(v, dict)}
        if str(ktp["remote_engine_id"]) not in engine_ids:
            raise _KvMiss("engine-mismatch")
        expected_len = len(req.prompt_ids) * self.config.kv_bytes_per_token
        region = self.mooncake.register(expected_len) if self.mooncake is not None and expected_len else None
        try:
            payload = {"engine_id": self.config.engine_id, "length": expected_len,
                       "segment": self.mooncake.segment if region is not None else None,
                       "address": region.address if region is not None else None}
            async with self.session.post(f"{base}/sim/xfer/{ktp['transfer_id']}", json=payload) as resp:
                if resp.status in (404, 410):
                    raise _KvMiss((await resp.json()).get("reason", "unprocessed"))
                resp.raise_for_status()
                if region is not None and resp.content_type == "application/json":  # P wrote into our buffer
                    info = await resp.json()
                    data = self.mooncake.read_region(region)[: int(info["length"])]  # type: ignore[union-attr]
                    return data, "mooncake"
                return await resp.read(), "http"
        finally:
            if region is not None:
                self.mooncake.unregister(region)  # type: ignore[union-attr]

    def forget_remote(self, ktp: dict[str, Any]) -> None:
        """An aborted remote-prefill request: release P's blocks in the background."""
        if self.session is None or self.session.closed:
            return
        task = asyncio.get_running_loop().create_task(self.release_remote(ktp))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def release_remote(self, ktp: dict[str, Any]) -> None:
        """A remote-prefill request rejected before admission: let P free its blocks (§0.2)."""
        if (self.config.protocol in ("mooncake_v1", "nixl") and self.config.is_consumer
                and isinstance(ktp, dict) and ktp.get("do_remote_prefill")
                and ktp.get("remote_host") and ktp.get("remote_port") and ktp.get("remote_request_id")):
            await self._notify_done(self._peer_url(ktp["remote_host"], ktp["remote_port"]),
                                    str(ktp["remote_request_id"]))


class _KvMiss(Exception):
    """The producer had no (usable) KV for this request; the message is the reason."""


class _Abort(Exception):
    """Drop the client connection without an answer (crash-like faults)."""


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
    except (Died, _Abort):
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
        # --- where the prompt's KV comes from
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
        kv_settled = True
        external = max(0, min(load.tokens, prompt_len - 1) - local_hits) if load.source != "local" else 0
        computed = prompt_len - local_hits - external
        engine.metrics.inc("pd_sim_kv_loads_total", labels={"source": load.source, "reason": load.reason})
        _count_prompt(engine, prompt_len, local_hits, external, load)

        # --- prefill
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


def _count_prompt(engine: SimEngine, prompt_len: int, local_hits: int, external: int, load: KvLoad) -> None:
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


async def _generate(engine: SimEngine, http: web.Request, req: Request, arrival: float):
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
            raise _Abort()
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


def _finish(engine: SimEngine, req: Request, tokens: list[int], arrival: float, expected: bytes) -> tuple[str, Any]:
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


def _usage(req: Request, n_tokens: int, cached: int) -> dict:
    return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": n_tokens,
            "total_tokens": len(req.prompt_ids) + n_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _text(tokens: list[int]) -> str:
    return "".join(model.token_text(t) for t in tokens)


async def _complete(engine: SimEngine, http: web.Request, req: Request, headers: dict, arrival: float,
                    cached: int, expected: bytes) -> web.Response:
    tokens = [token async for _, token in _generate(engine, http, req, arrival)]
    reason, params = _finish(engine, req, tokens, arrival, expected)
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
    async for position, token in _generate(engine, http, req, arrival):
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
    _finish(engine, req, tokens, arrival, expected)
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

