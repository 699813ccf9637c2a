#!/usr/bin/env python3
"""A zero-delay vLLM stand-in for measuring proxy overhead: a bare asyncio HTTP/1.1 server.

The engine simulator (`openfuyao_pd.sim`) models scheduling and KV transfer, and at ~400 req/s it,
not the proxy, is the limit on this host. This mock does the least an OpenAI endpoint can do, so
that the proxy in front of it is what the benchmark measures:

- `GET /health`, `GET /v1/models`, `GET /healthcheck`: 200.
- `POST /v1/completions` and `/v1/chat/completions`:
  - with `kv_transfer_params.do_remote_decode` (a prefill request): one token and NIXL-shaped
    `kv_transfer_params` to hand to D, as vLLM's NixlConnector returns them;
  - otherwise `max_tokens` tokens, as one JSON body or as SSE events (one HTTP chunk per token,
    the event loop yielded between tokens like an engine emitting them one by one), then a usage
    chunk when `stream_options.include_usage` is set, then `data: [DONE]`.

    python bench/mock_engine.py --port 8100 [--procs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

OK_JSON = b'{"status":"ok","data":[{"id":"tiny-llama","object":"model"}]}'


def _head(status: int, ctype: bytes, length: int | None) -> bytes:
    reason = b"OK" if status == 200 else b"Error"
    size = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sConnection: keep-alive\r\n\r\n" % (status, reason, ctype, size)


def completion(body: dict[str, Any], chat: bool, n: int, request_id: str) -> dict[str, Any]:
    text = " tok" * n
    choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                              if chat else {"index": 0, "text": text, "finish_reason": "length"})
    prompt_tokens = len(str(body.get("prompt") or body.get("messages") or "")) // 4
    out: dict[str, Any] = {"id": request_id, "object": "chat.completion" if chat else "text_completion",
                           "created": int(time.time()), "model": body.get("model", "tiny-llama"), "choices": [choice],
                           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                     "total_tokens": prompt_tokens + n,
                                     "prompt_tokens_details": {"cached_tokens": 0}}}
    params = body.get("kv_transfer_params")
    if isinstance(params, dict) and params.get("do_remote_decode"):
        out["kv_transfer_params"] = {"do_remote_prefill": True, "do_remote_decode": False,
                                     "remote_engine_id": "mock-prefill", "remote_block_ids": [1, 2, 3],
                                     "remote_host": "127.0.0.1", "remote_port": 5600, "tp_size": 1}
    return out


class Engine(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            raw = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self._handle(method, path, raw)

    def _send(self, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        self.transport.write(_head(status, ctype, len(body)) + body)

    def _handle(self, method: str, path: str, raw: bytes) -> None:
        path = path.split("?", 1)[0]
        if method == "GET":
            self._send(200, OK_JSON if path in ("/health", "/v1/models", "/healthcheck") else b"{}")
            return
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._send(404, b'{"error":"not found"}')
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, b'{"error":"bad json"}')
            return
        self.count += 1
        chat = path.endswith("chat/completions")
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        rid = f"cmpl-{id(self):x}-{self.count}"
        if not body.get("stream"):
            self._send(200, json.dumps(completion(body, chat, n, rid)).encode())
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._stream(body, chat, n, rid))

    async def _stream(self, body: dict[str, Any], chat: bool, n: int, rid: str) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(_head(200, b"text/event-stream", None))
        kind = "chat.completion.chunk" if chat else "text_completion"
        for i in range(n):
            delta: dict[str, Any] = ({"index": 0, "delta": {"content": " tok"}, "finish_reason": None}
                                     if chat else {"index": 0, "text": " tok", "finish_reason": None})
            if i == n - 1:
                delta["finish_reason"] = "length"
            event = b"data: " + json.dumps({"id": rid, "object": kind, "model": "tiny-llama",
                                            "choices": [delta]}).encode() + b"\n\n"
            transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            await asyncio.sleep(0)
            if transport.is_closing():
                return
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = completion(body, chat, n, rid)["usage"]
            event = b"data: " + json.dumps({"id": rid, "object": kind, "choices": [], "usage": usage}).encode() + b"\n\n"
            transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        done = b"data: [DONE]\n\n"
        transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        self.busy = False
        self._next()


async def serve(host: str, port: int, reuse_port: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Engine, host, port, backlog=1024, reuse_port=reuse_port or None)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--procs", type=int, default=1,
                        help="processes serving the port (SO_REUSEPORT), so that one engine's single core "
                             "does not bound a proxy that has more")
    args = parser.parse_args()
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # the engine should not be the bottleneck: use the fastest loop there is

        run = uvloop.run
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            run(serve(args.host, args.port, True))
            os._exit(0)
        children.append(pid)
    try:
        run(serve(args.host, args.port, args.procs > 1))
    finally:
        for pid in children:  # a stopped engine takes its helpers with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
