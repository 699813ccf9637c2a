"""Backend state and the pure routing decisions (no I/O here, so they are unit-testable)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def url_host(address: str) -> str:
    """Bracket IPv6 literals for use in URLs."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


class PrefixIndex:
    """Approximate per-backend prefix cache: an LRU set of chained prompt-block hashes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: Sequence[int]) -> int:
        """Number of leading blocks this backend has probably cached."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n

    def insert(self, hashes: Sequence[int]) -> None:
        if self.capacity <= 0:
            return
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


@dataclass(eq=False)
class Backend:
    name: str
    role: str
    address: str
    port: int
    options: dict[str, Any] = field(default_factory=dict)
    prefix: PrefixIndex = field(default_factory=lambda: PrefixIndex(100000))
    healthy: bool = True       # result of the last probe (or passive observation)
    ejected: bool = False      # excluded from routing after repeated failures
    draining: bool = False     # no new requests; in-flight ones finish
    removed: bool = False
    fail_streak: int = 0
    ok_streak: int = 0
    inflight_requests: int = 0
    inflight_tokens: int = 0
    engine_id: str | None = None  # upstream MooncakeConnector: from the bootstrap /query, else options
    engine_id_queried: bool = False
    # Several workers (shared.py): this worker's own counts also go to its row of the shared
    # table, and refresh() reads the sums over every worker into the two fields above.
    cells: Any = None
    col: int = -1

    @property
    def url(self) -> str:
        return f"http://{url_host(self.address)}:{self.port}"

    @property
    def host(self) -> str:
        """The address to connect to (IPv6 without brackets)."""
        return self.address[1:-1] if self.address.startswith("[") else self.address

    @property
    def available(self) -> bool:
        return not (self.ejected or self.draining or self.removed)

    def acquire(self, tokens: int) -> None:
        self.inflight_requests += 1
        self.inflight_tokens += tokens
        if self.cells is not None:
            self.cells.add(self.col, 1, tokens)

    def release(self, tokens: int) -> None:
        self.inflight_requests -= 1
        self.inflight_tokens -= tokens
        if self.cells is not None:
            self.cells.add(self.col, -1, -tokens)

    def refresh(self) -> None:
        """In-flight counts over every worker (only with a shared table)."""
        if self.cells is not None:
            self.inflight_requests, self.inflight_tokens = self.cells.totals(self.col)

    def record_failure(self, threshold: int) -> bool:
        """Count a failed probe or connection; return True when this ejects the backend."""
        self.healthy = False
        self.ok_streak = 0
        self.fail_streak += 1
        if not self.ejected and self.fail_streak >= threshold:
            self.ejected = True
            return True
        return False

    def record_success(self, threshold: int) -> bool:
        """Count a good probe; return True when this re-admits the backend."""
        self.healthy = True
        self.fail_streak = 0
        self.ok_streak += 1
        if self.ejected and self.ok_streak >= threshold:
            self.ejected = False
            return True
        return False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "url": self.url, "healthy": self.healthy,
                "ejected": self.ejected, "draining": self.draining,
                "inflight_requests": self.inflight_requests, "inflight_tokens": self.inflight_tokens}


# ---------------------------------------------------------------------------------------------
# Prompt size estimation without a tokenizer


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # chat content parts
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_key(body: dict[str, Any], chat: bool) -> tuple[str | list[int], bool]:
    """The prompt as text (or a token id list) plus whether it is token ids."""
    if chat:
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return "", False
        return "".join(
            f"<{m.get('role', '')}>{_text_of(m.get('content'))}" for m in messages if isinstance(m, dict)
        ), False
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        return prompt, False
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt, True
    if isinstance(prompt, list):  # a batch: strings or token lists, concatenated for estimation
        if all(isinstance(p, str) for p in prompt):
            return "".join(prompt), False
        flat: list[int] = []
        for p in prompt:
            if isinstance(p, list):
                flat.extend(t for t in p if isinstance(t, int))
        return flat, True
    return "", False


def estimate_tokens(key: str | list[int], is_ids: bool, chars_per_token: float) -> int:
    if is_ids:
        return len(key)
    return max(1, math.ceil(len(key) / chars_per_token)) if key else 1


def block_hashes(key: str | list[int], is_ids: bool, block_tokens: int, chars_per_token: float) -> list[int]:
    """Chained hashes of full prompt blocks (like vLLM's prefix cache: a block's hash covers its prefix)."""
    size = block_tokens if is_ids else max(1, int(block_tokens * chars_per_token))
    out: list[int] = []
    prev = 0
    for start in range(0, len(key) - size + 1, size):
        chunk = key[start:start + size]
        prev = hash((prev, tuple(chunk) if is_ids else chunk))
        out.append(prev)
    return out


# ---------------------------------------------------------------------------------------------
# Backend selection


def least_loaded(candidates: Sequence[Backend], start: int) -> Backend:
    """Fewest in-flight tokens, then requests; ties rotate from `start` so equal backends share load."""
    n = len(candidates)
    best = candidates[start % n]
    for i in range(1, n):
        b = candidates[(start + i) % n]
        if (b.inflight_tokens, b.inflight_requests) < (best.inflight_tokens, best.inflight_requests):
            best = b
    return best


# A cached backend keeps a request while it has at most this many times the requests in flight of the
# lightest one (plus AFFINITY_SLACK_REQUESTS). A burst of shared-prefix requests arrives faster than
# any token gap builds up; this rule makes affinity yield after a couple of requests, and once the
# lighter backend holds the prefix too, the two tie on the match and load decides.
AFFINITY_MAX_LOAD_RATIO = 2
AFFINITY_SLACK_REQUESTS = 1


def affinity_overloaded(chosen: Backend, lightest: Backend, max_imbalance_tokens: int) -> bool:
    """True when prefix affinity must give way to the lightest backend."""
    if chosen.inflight_tokens - lightest.inflight_tokens > max_imbalance_tokens:
        return True
    return chosen.inflight_requests > AFFINITY_MAX_LOAD_RATIO * lightest.inflight_requests + AFFINITY_SLACK_REQUESTS


def pick_backend(
    candidates: Sequence[Backend],
    policy: str,
    counter: int,
    hashes: Sequence[int],
    max_imbalance_tokens: int,
) -> tuple[Backend, int]:
    """Choose a backend; return it with the number of prompt blocks it probably has cached."""
    if not candidates:
        raise LookupError("no available backend")
    if policy == "round_robin":
        chosen = candidates[counter % len(candidates)]
        return chosen, chosen.prefix.match(hashes)
    if policy == "prefix_affinity" and hashes:
        matches = [(b.prefix.match(hashes), b) for b in candidates]
        best_match = max(m for m, _ in matches)
        if best_match > 0:
            top = [b for m, b in matches if m == best_match]
            chosen = least_loaded(top, counter)
            lightest = least_loaded(candidates, counter)
            # Affinity must not pile everything on one backend: past the imbalance bound, balance wins.
            if not affinity_overloaded(chosen, lightest, max_imbalance_tokens):
                return chosen, best_match
            return lightest, lightest.prefix.match(hashes)
    chosen = least_loaded(candidates, counter)
    return chosen, chosen.prefix.match(hashes)


# ---------------------------------------------------------------------------------------------
# PD load awareness (conditional disaggregation)


def decide_route(
    uncached_tokens: int,
    prefill_queue: int | None,
    decode_inflight: int,
    local_prefill_max_tokens: int,
    prefill_queue_threshold: int,
    decode_busy_threshold: int,
) -> tuple[str, str]:
    """Return (route, reason): route is "local" (prefill on decode) or "disagg".

    prefill_queue is the in-flight prefill requests on the least busy prefill instance, or None when
    no prefill instance is available.
    """
    if prefill_queue is None:
        return "local", "no_prefill"
    short = local_prefill_max_tokens > 0 and uncached_tokens <= local_prefill_max_tokens
    queued = 0 < prefill_queue_threshold <= prefill_queue
    if not (short or queued):
        return "disagg", "default"
    if 0 < decode_busy_threshold <= decode_inflight:
        return "disagg", "decode_busy"
    return "local", "short_prompt" if short else "prefill_queue"


def priority_for(tokens: int, buckets: Sequence[tuple[int, int]]) -> int:
    """vLLM priority (lower runs first) for a prompt of `tokens` estimated tokens."""
    for limit, priority in buckets:
        if tokens <= limit:
            return priority
    return buckets[-1][1] + 1
