"""The simulated engine: ``SimEngine`` (the state every handler of sim/server.py shares: request
parsing, KV hold/pull/release across the PD protocols, metrics) and its parts: admission (max
seqs, KV blocks, priority), prefix cache, KV held for remote decode, the shared-storage KV store."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from openfuyao_pd import kvxfer
from openfuyao_pd.sim import kvpool, layerwise, model
from openfuyao_pd.sim.config import ConfigError, SimConfig
from openfuyao_pd.sim.faults import FailDice, parse_faults
from openfuyao_pd.sim.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, Registry

LOG = logging.getLogger("pd-engine-sim")


class CapacityError(ValueError):
    """A request can never fit (more KV blocks than the engine has)."""


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]
    blocks: int = field(compare=False)
    future: asyncio.Future = field(compare=False)


class Scheduler:
    """Admits requests while a sequence slot and their KV blocks are free.

    Waiting requests are served in arrival order (fcfs) or by (priority, arrival) (priority),
    head-of-line like vLLM's waiting queue. Blocks held for a remote decode count as used.
    """

    def __init__(self, max_seqs: int, capacity_blocks: int, policy: str) -> None:
        self.max_seqs = max_seqs
        self.capacity = capacity_blocks
        self.policy = policy
        self.running = 0
        self.used_blocks = 0
        self.held_blocks = 0
        self._queue: list[_Waiter] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._queue if not w.future.done())

    @property
    def free_blocks(self) -> int:
        return self.capacity - self.used_blocks - self.held_blocks

    def _fits(self, blocks: int) -> bool:
        return self.running < self.max_seqs and blocks <= self.free_blocks

    async def admit(self, blocks: int, priority: int = 0) -> None:
        if blocks > self.capacity:
            raise CapacityError(f"request needs {blocks} KV blocks, the engine has {self.capacity}")
        rank = (priority if self.policy == "priority" else 0, next(self._arrivals))
        if not self._queue and self._fits(blocks):
            self._take(blocks)
            return
        waiter = _Waiter(rank, blocks, asyncio.get_running_loop().create_future())
        heapq.heappush(self._queue, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(blocks)  # admitted and cancelled in the same tick
            else:
                self._queue.remove(waiter)
                heapq.heapify(self._queue)
                self._wake()
            raise

    def _take(self, blocks: int) -> None:
        self.running += 1
        self.used_blocks += blocks

    def release(self, blocks: int) -> None:
        self.running -= 1
        self.used_blocks -= blocks
        self._wake()

    def hold(self, blocks: int) -> None:
        self.held_blocks += blocks

    def unhold(self, blocks: int) -> None:
        self.held_blocks -= blocks
        self._wake()

    def _wake(self) -> None:
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                heapq.heappop(self._queue)
                continue
            if not self._fits(head.blocks):
                return
            heapq.heappop(self._queue)
            self._take(head.blocks)
            head.future.set_result(None)


class ComputeLane:
    """The engine's compute for prefill: one chunk at a time, so concurrent prefills contend.

    A prefill is cut into chunks of at most ``max_num_batched_tokens`` (chunked prefill); each
    chunk waits for the lane, in arrival order or by (priority, arrival), so long prompts do
    not starve short ones and a busy instance really is slower to first token.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.busy = False
        self._queue: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._chunk_end: asyncio.Event | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._queue if not w.future.done())

    async def join_step(self) -> None:
        """A decode step shares the forward pass of a running prefill chunk (mixed batch):
        it ends when that chunk ends. Returns at once when no chunk runs."""
        if self.busy and self._chunk_end is not None:
            await self._chunk_end.wait()

    async def run(self, seconds: float, priority: int = 0) -> None:
        rank = (priority if self.policy == "priority" else 0, next(self._arrivals))
        if self.busy or self.waiting:
            waiter = _Waiter(rank, 0, asyncio.get_running_loop().create_future())
            heapq.heappush(self._queue, waiter)
            try:
                await waiter.future
            except asyncio.CancelledError:
                if waiter.future.done() and not waiter.future.cancelled():
                    self._release()  # the lane was handed to us as we were cancelled
                raise
        else:
            self.busy = True
        chunk_end = self._chunk_end = asyncio.Event()
        try:
            await asyncio.sleep(seconds)
        finally:
            chunk_end.set()
            self._release()

    def _release(self) -> None:
        while self._queue:
            head = heapq.heappop(self._queue)
            if not head.future.done():
                head.future.set_result(None)  # hand the lane over (stays busy)
                return
        self.busy = False


class PrefixCache:
    """Block-hash LRU of computed full blocks (vLLM automatic prefix caching)."""

    def __init__(self, capacity_blocks: int, enabled: bool) -> None:
        self.capacity = capacity_blocks
        self.enabled = enabled
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def hits(self, hashes: list[bytes]) -> int:
        """Number of leading blocks already cached."""
        if not self.enabled:
            return 0
        count = 0
        for block in hashes:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            count += 1
        return count

    def insert(self, hashes: list[bytes]) -> None:
        if not self.enabled:
            return
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


@dataclass
class HeldKv:
    """A finished prefill's KV kept for a decode instance to fetch (or to be pushed)."""

    key: str
    data: bytes
    checksum: str
    blocks: int
    block_ids: list[int]
    expires: float
    region: Any = None  # kvxfer.Region when registered with Mooncake
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str | None = None  # mooncake push: why the transfer cannot happen
    served_http: bool = False  # a decode without Mooncake fetched the bytes over HTTP


class HeldStore:
    """KV blocks a producer keeps until the consumer confirms or the timeout frees them."""

    def __init__(self, scheduler: Scheduler, timeout_s: float) -> None:
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.items: dict[str, HeldKv] = {}
        self._block_ids = itertools.count()
        self.freed: dict[str, int] = {"pulled": 0, "timeout": 0, "rejected": 0}

    def new_block_ids(self, count: int) -> list[int]:
        return [next(self._block_ids) for _ in range(count)]

    def put(self, item: HeldKv) -> None:
        old = self.items.get(item.key)
        if old is not None and old.blocks:
            self.scheduler.unhold(old.blocks)
        self.items[item.key] = item
        self.scheduler.hold(item.blocks)

    def pop(self, key: str, reason: str) -> HeldKv | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.scheduler.unhold(item.blocks)
            self.freed[reason] = self.freed.get(reason, 0) + 1
        return item

    def expired(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [key for key, item in self.items.items() if item.expires <= now]

    @property
    def held_blocks(self) -> int:
        return sum(item.blocks for item in self.items.values())


class SharedKvStore:
    """Centralized KV: one file per full block under a shared directory, named by block hash."""

    def __init__(self, root: str, model_tag: str, writable: bool) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_tag)
        self.root = Path(root) / safe
        self.errors = 0
        try:  # fail at start-up, in one line, rather than on every request
            if writable:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".probe{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            elif Path(root).exists() and not Path(root).is_dir():  # missing is fine: no producer wrote yet
                raise OSError(f"{root} is not a directory")
        except OSError as exc:
            raise ConfigError(f"shared KV storage {root} is not usable ({exc}); mount the shared volume there "
                              f"or fix shared_storage_path / storage_backends") from exc

    def _path(self, block_hash: bytes) -> Path:
        name = block_hash.hex()
        return self.root / name[:2] / f"{name}.kv"

    def save(self, hashes: list[bytes], data: bytes, block_bytes: int) -> int:
        """Write missing blocks (atomically); returns bytes written."""
        written = 0
        for index, block_hash in enumerate(hashes):
            path = self._path(block_hash)
            if path.exists():
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(data[index * block_bytes:(index + 1) * block_bytes])
                os.replace(tmp, path)
            except OSError as exc:  # full or vanished volume: the decode side will recompute
                self.errors += 1
                LOG.warning("cannot write KV block to %s: %s", path, exc)
                return written
            written += block_bytes
        return written

    def load(self, hashes: list[bytes], expected: bytes, block_bytes: int) -> tuple[int, int, str]:
        """Leading blocks present and intact: (blocks, bytes read, reason for stopping)."""
        read = 0
        for index, block_hash in enumerate(hashes):
            try:
                data = self._path(block_hash).read_bytes()
            except OSError:
                return index, read, "ok" if index else "not-found"
            read += len(data)
            if data != expected[index * block_bytes:(index + 1) * block_bytes]:
                return index, read, "corrupt"
        return len(hashes), read, "ok"


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
        reg.counter("vllm:prompt_tokens_by_source_total", "Number of prompt tokens by source.", labels=["source"],
                    preset=[{"source": s} for s in ("local_compute", "local_cache_hit", "external_kv_transfer")])
        reg.counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.")
        reg.counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.")
        reg.counter("vllm:external_prefix_cache_queries_total",
                    "External prefix cache queries from KV connector, in terms of number of queried tokens.")
        reg.counter("vllm:external_prefix_cache_hits_total",
                    "External prefix cache hits from KV connector, in terms of number of cached tokens.")
        reg.counter("vllm:request_success_total", "Count of successfully processed requests.",
                    labels=["finished_reason"], preset=[{"finished_reason": r} for r in ("stop", "length", "abort")])
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
        transports = [{"transport": t} for t in ("http", "mooncake", "shared")]
        reg.counter("pd_sim_kv_held_freed_total", "Held KV released, by reason (pulled, timeout, rejected).",
                    labels=["reason"])
        reg.counter("pd_sim_kv_bytes_sent_total", "KV bytes served to decode instances, by transport.",
                    labels=["transport"], preset=transports)
        reg.counter("pd_sim_kv_bytes_received_total", "KV bytes received from prefill instances, by transport.",
                    labels=["transport"], preset=transports)
        reg.counter("pd_sim_kv_loads_total", "How prompts' KV was obtained, by source and reason.",
                    labels=["reason", "source"])
        reg.counter("pd_sim_kv_params_returned_total", "Prefill answers carrying kv_transfer_params.")
        reg.counter("pd_sim_kv_params_withheld_total", "Prefill answers without kv_transfer_params, by reason.",
                    labels=["reason"])
        reg.counter("pd_sim_kv_pushes_total", "Layerwise prefills' pushes into a decode's blocks, by outcome.",
                    labels=["reason"])
        reg.counter("pd_sim_requests_total", "Completion requests received, by endpoint.", labels=["endpoint"])
        reg.counter("pd_sim_requests_aborted_total", "Requests aborted before they finished (client gone).")
        reg.counter("pd_sim_faults_injected_total", "Faults injected, by fault.", labels=["fault"])
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
        except KvMiss as exc:
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
                raise KvMiss("not-found")
            resp.raise_for_status()
            desc = await resp.json()
        if str(desc.get("engine_id")) != str(ktp["remote_engine_id"]):
            raise KvMiss("engine-mismatch")
        if len(ktp.get("remote_block_ids") or []) != desc.get("num_blocks"):
            raise KvMiss("block-mismatch")

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
            raise KvMiss("engine-mismatch")
        expected_len = len(req.prompt_ids) * self.config.kv_bytes_per_token
        region = self.mooncake.register(expected_len) if self.mooncake is not None and expected_len else None
        try:
            payload = {"engine_id": self.config.engine_id, "length": expected_len,
                       "segment": self.mooncake.segment if region is not None else None,
                       "address": region.address if region is not None else None}
            async with self.session.post(f"{base}/sim/xfer/{ktp['transfer_id']}", json=payload) as resp:
                if resp.status in (404, 410):
                    raise KvMiss((await resp.json()).get("reason", "unprocessed"))
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


class KvMiss(Exception):
    """The producer had no (usable) KV for this request; the message is the reason."""
