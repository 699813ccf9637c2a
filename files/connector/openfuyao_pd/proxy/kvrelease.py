"""No stranded KV: release what a finished prefill holds when no decode will take it.

A P2P prefill (mooncake_v1, nixl, upstream mooncake) keeps the prompt's KV blocks after it
answered, until a decode has pulled them (or they were pushed), or until the engine's abort
timeout (vllm-ascend/upstream Mooncake: VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT, 480 s). When the
client leaves between "P answered" and "D took the KV", or D fails before taking it and the
request is re-prefilled elsewhere, those blocks would stay stranded for minutes.

Every one of these connectors frees P's blocks once a decode has consumed the transfer, so the
proxy completes the handoff itself: it sends a decode the request with P's
kv_transfer_params, `max_tokens=1`, no stream, and discards the answer (docs/proxy.md, "No
stranded KV", cites each connector's path). The effort is bounded: one request per stranded
prefill, `kv_release_timeout` seconds at most, `kv_release_concurrency` at once; beyond that
the engine's own timeout remains the backstop. `centralized` prefills keep nothing for a
decode (the KV is in the shared store), so nothing is sent for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from openfuyao_pd.proxy.metrics import Registry

LOG = logging.getLogger("openfuyao_pd.proxy")
HOLDING_PROTOCOLS = ("mooncake_v1", "nixl", "mooncake")


def release_body(decode_body: dict[str, Any]) -> dict[str, Any]:
    """The smallest decode request that still consumes P's KV: one token, no stream."""
    out = dict(decode_body)
    out["stream"] = False
    out.pop("stream_options", None)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    for key in ("min_tokens", "min_completion_tokens", "logprobs", "top_logprobs", "prompt_logprobs", "echo"):
        out.pop(key, None)
    out["n"] = 1
    return out


class KvReleaser:
    """Background release requests, bounded in time and number."""

    def __init__(self, opts: dict[str, Any], registry: Registry) -> None:
        self.enabled = bool(opts["kv_release"])
        self.timeout = float(opts["kv_release_timeout"])
        self.concurrency = int(opts["kv_release_concurrency"])
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(self.concurrency)
        # Releases waiting for a slot, at most: a storm of disconnects queues, a flood is cut.
        self.backlog = max(1000, 16 * self.concurrency)
        self.m_released = registry.counter(
            "pd_proxy_kv_released_total",
            "Prefill KV the proxy made a decode take (1-token request, answer discarded), by why it was stranded.",
            ("reason",))
        self.m_failed = registry.counter(
            "pd_proxy_kv_release_failures_total",
            "Stranded prefill KV the proxy could not release (left to the engine's timeout), by why.", ("reason",))

    def schedule(self, session: aiohttp.ClientSession | None, url: str | None, path: str, body: dict[str, Any],
                 headers: dict[str, str], reason: str) -> bool:
        """Start one release (url None = no decode left); False when it was not started."""
        if not self.enabled:
            return False
        if url is None or session is None or session.closed:
            self.m_failed.inc("no_decode")
            return False
        if len(self.tasks) >= self.backlog:
            self.m_failed.inc("skipped")
            return False
        task = asyncio.get_running_loop().create_task(self._send(session, url + path, body, headers, reason))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _send(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str],
                    reason: str) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self.slots, session.post(url, data=json.dumps(body).encode(), headers=headers, timeout=timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.m_failed.inc("timeout" if isinstance(exc, TimeoutError) else "error")
            LOG.warning(json.dumps({"event": "kv_release_failed", "request_id": headers.get("X-Request-Id"),
                                    "error": type(exc).__name__}))
            return
        if ok:
            self.m_released.inc(reason)
        else:
            # A 4xx/5xx: vllm-ascend's D frees P's blocks for a request it rejects before admission
            # (pd-proxies.md §0.2); counted apart because the proxy cannot tell it happened.
            self.m_failed.inc(f"http_{resp.status // 100}xx")

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def wants(self, protocol: str) -> bool:
        return self.enabled and protocol in HOLDING_PROTOCOLS


def stranded(pending: dict[str, Any] | None, prefill_done: bool, handoff_done: bool) -> bool:
    """P answered (its KV is held) and no decode has taken it yet."""
    return pending is not None and prefill_done and not handoff_done

