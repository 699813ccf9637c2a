"""Per-request state: ids, route, stage timings, and the in-flight holds taken on backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openfuyao_pd.proxy.routing import Backend


@dataclass
class Hold:
    backend: Backend
    tokens: int
    released: bool = False


@dataclass
class RequestCtx:
    request_id: str
    endpoint: str
    start: float
    stream: bool
    headers: dict[str, str]
    route: str = "none"
    reason: str = "none"
    prefill: str = ""
    decode: str = ""
    outcome: str = "success"
    status: int = 200
    retries: int = 0
    fallback: str = ""
    missing_params: bool = False
    committed: bool = False
    cached_tokens: int | None = None
    prefill_s: float | None = None
    handoff_start: float | None = None
    handoff_s: float | None = None
    ttft_s: float | None = None
    holds: list[Hold] = field(default_factory=list)
    kv_pending: dict[str, Any] | None = None  # {path, body}: the release request while P holds KV for a D

    def hold(self, backend: Backend, tokens: int) -> Hold:
        backend.acquire(tokens)
        held = Hold(backend, tokens)
        self.holds.append(held)
        return held

    @staticmethod
    def release(held: Hold) -> None:
        if not held.released:
            held.released = True
            held.backend.release(held.tokens)

    def release_all(self) -> None:
        for held in self.holds:
            self.release(held)
