"""vllm-ascend MooncakeLayerwiseConnector: the decode is asked first, the prefill is sent from
the proxy's /v1/metaserver once the decode has posted where its blocks are (pd-proxies.md §0.3).

Flow (vllm-ascend examples/disaggregated_prefill_v1/load_balance_proxy_layerwise_server_example.py):
1. the proxy sends the client's request to D with kv_transfer_params
   {do_remote_decode: false, do_remote_prefill: true, metaserver: <this proxy>/v1/metaserver};
2. D allocates blocks and POSTs {request_id: cmpl-<X-Request-Id>-<i> | chatcmpl-<X-Request-Id>,
   remote_block_ids, remote_host, remote_port, remote_engine_id, ...} to the metaserver;
3. once every child id of the request has posted, the proxy sends the prefill (max_tokens 1, no
   stream) with those params (several children: BATCH_KV_TRANSFER_PARAMS by child id), P pushes
   the KV layer by layer into D's blocks, and the metaserver answers D {"status": "ok"} once P
   answered (502 when the prefill failed, 404 for an id it does not know).

The waiting state lives in this process: D must reach the proxy process that sent it the request
(one proxy process per metaserver address).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Dispatch = Callable[[dict[str, dict[str, Any]]], Awaitable[None]]


@dataclass
class Pending:
    """One client request whose decode has not posted all its children yet."""

    expected: tuple[str, ...]
    dispatch: Dispatch
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Metaserver:
    """Child request id -> the pending request; the prefill is dispatched once per request."""

    def __init__(self) -> None:
        self.by_child: dict[str, Pending] = {}

    def register(self, children: list[str], dispatch: Dispatch) -> Pending:
        pending = Pending(expected=tuple(children), dispatch=dispatch)
        for child in children:
            self.by_child[child] = pending
        return pending

    async def forget(self, pending: Pending) -> None:
        """The decode answered (or failed): drop the ids; a prefill still running is cancelled."""
        for child in pending.expected:
            if self.by_child.get(child) is pending:
                del self.by_child[child]
        task = pending.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif task is not None and not task.cancelled():
            task.exception()  # retrieved: its failure was reported to D already

    async def post(self, params: Any) -> tuple[int, dict[str, Any]]:
        """A decode's POST /v1/metaserver: (status, JSON answer)."""
        if not isinstance(params, dict):
            return 400, {"error": "the metaserver body must be a JSON object"}
        child = params.get("request_id")
        pending = self.by_child.get(child) if isinstance(child, str) else None
        if pending is None:
            return 404, {"error": f"unknown metaserver request_id: {str(child)[:80]!r}"}
        pending.params[child] = params
        if pending.task is None and all(c in pending.params for c in pending.expected):
            pending.task = asyncio.create_task(pending.dispatch(dict(pending.params)))
            pending.ready.set()
        await pending.ready.wait()
        assert pending.task is not None
        try:
            await asyncio.shield(pending.task)
        except asyncio.CancelledError:
            if pending.task.cancelled():
                return 502, {"error": "the request was abandoned before the prefill finished"}
            raise
        except Exception as exc:  # the prefill failed: D must not wait for KV that never comes
            return 502, {"error": f"prefill failed: {exc}"}
        return 200, {"status": "ok"}
