"""The simulated engine core: admission (max seqs, KV blocks, priority), prefix cache,
KV held for remote decode, and the shared-storage KV store."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfuyao_pd.sim.config import ConfigError

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
