"""The lean front (proxy/front.py): which requests it serves, which it hands to aiohttp, and that
both answer the same on one connection, over raw sockets against a real proxy process."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfuyao_pd.proxy.front import Head, parse_head
from test_proxy_edges import proxy_process
from test_proxy_flow import MODEL

HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12"


# ------------------------------------------------------------------------------------------- parse_head
def test_a_plain_generate_head_is_read():
    head = parse_head(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length:  7 \r\n"
                      b"X-Request-Id: abc\r\nAuthorization: Bearer t\r\nConnection: Close")
    assert head == Head("/v1/chat/completions", True, 7, "abc", "Bearer t", True)
    assert parse_head(HEAD) == Head("/v1/completions", False, 12, None, None, False)


@pytest.mark.parametrize("raw", [
    HEAD.replace(b"POST", b"GET"),                                  # another method
    HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),                         # another version
    HEAD.replace(b"/v1/completions", b"/v1/completions?x=1"),       # a query string
    HEAD.replace(b"/v1/completions", b"/v1/models"),                # another route
    HEAD.replace(b"Content-Length: 12", b"Transfer-Encoding: chunked"),
    HEAD + b"\r\nTransfer-Encoding: chunked",                       # both framings
    HEAD + b"\r\nExpect: 100-continue",
    HEAD + b"\r\nUpgrade: websocket",
    HEAD + b"\r\nContent-Length: 12",                               # twice
    HEAD.replace(b"12", b"-1"),
    HEAD.replace(b"12", b"0x1"),
    HEAD.replace(b"Content-Length: 12", b"Host: y"),                # no length
    HEAD.replace(b"Content-Length:", b"Content-Length :"),          # space before the colon
    HEAD + b"\r\n folded",                                          # obsolete line folding
    HEAD + b"\r\nNoColon",
    HEAD + b"\r\nX-A: a\x00b",                                      # a control character
    HEAD + b"\nX-A: b",                                             # a bare LF
    b"POST  /v1/completions HTTP/1.1\r\nContent-Length: 1",        # two spaces
])
def test_anything_unusual_is_left_to_aiohttp(raw):
    assert parse_head(raw) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_head_never_raises(raw):
    head = parse_head(raw)
    assert head is None or head.path in ("/v1/completions", "/v1/chat/completions")


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "expect", "upgrade", "connection",
                                "x-request-id", "authorization"))
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_TOKEN, _VALUE), max_size=8), st.integers(0, 10**9), _VALUE, st.booleans())
def test_the_fields_the_proxy_reads_come_back_whatever_else_is_there(extra, length, request_id, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    lines = [f"POST {path} HTTP/1.1", *(f"{n}: {v}" for n, v in extra), f"Content-Length: {length}",
             f"X-Request-Id: {request_id}"]
    assert parse_head("\r\n".join(lines).encode()) == Head(path, chat, length, request_id, None, False)


# ------------------------------------------------------------------------------------------- over sockets
async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (chunks joined)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += data[:-2]


def _post(body: dict, request_id: str = "", extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    rid = f"X-Request-Id: {request_id}\r\n" if request_id else ""
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{rid}{extra}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


REQ = {"model": MODEL, "prompt": "hello front", "max_tokens": 3}


async def test_one_connection_is_served_by_the_front_then_by_aiohttp_once_handed_over(tmp_path):
    async with proxy_process(tmp_path) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(_post(REQ, "lean-1"))
        status, headers, body = await _answer(reader)
        # The front writes no Server header; aiohttp does: that is how the test tells them apart.
        assert status == 200 and "server" not in headers and headers["x-request-id"] == "lean-1"
        assert json.loads(body)["choices"][0]["text"]
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # not a generate route: aiohttp's
        status, headers, body = await _answer(reader)
        assert status == 200 and "aiohttp" in headers["server"] and json.loads(body)["status"]
        writer.write(_post(REQ, "after-handoff"))  # the same connection, aiohttp's from now on
        status, headers, body = await _answer(reader)
        assert status == 200 and "aiohttp" in headers["server"] and headers["x-request-id"] == "after-handoff"
        assert json.loads(body)["choices"][0]["text"]
        writer.close()


async def test_pipelined_split_chunked_and_streamed_requests(tmp_path):
    async with proxy_process(tmp_path) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(_post(REQ, "first") + _post(REQ, "second"))  # pipelined in one write
        answers = [await _answer(reader) for _ in range(2)]
        assert [(s, h["x-request-id"]) for s, h, _ in answers] == [(200, "first"), (200, "second")]
        raw = _post(REQ, "split")
        for i in range(0, len(raw), 25):  # head and body in pieces
            writer.write(raw[i:i + 25])
            await writer.drain()
            await asyncio.sleep(0.02)
        status, headers, _ = await _answer(reader)
        assert (status, headers["x-request-id"], "server" in headers) == (200, "split", False)
        writer.write(_post({**REQ, "stream": True}, "sse"))
        status, headers, body = await _answer(reader)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        events = [line for line in body.split(b"\n\n") if line]
        assert events[-1] == b"data: [DONE]" and len(events) >= 2
        assert all(json.loads(e[6:])["choices"] for e in events[:-1])
        # A chunked request body: aiohttp's to read; the answer is the same kind.
        data = json.dumps(REQ).encode()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
        status, headers, body = await _answer(reader)
        assert status == 200 and "aiohttp" in headers["server"] and json.loads(body)["choices"]
        writer.close()


async def test_bad_bodies_close_and_idle_connections_answer_like_aiohttp(tmp_path):
    async with proxy_process(tmp_path, {"keepalive_timeout": 1.0, "max_body_bytes": 4096}) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        bad = b'{"model": "m", "prompt": "x", "max_tokens": "5"}'
        writer.write(HEAD.replace(b"12", str(len(bad)).encode()) + b"\r\n\r\n" + bad)
        status, headers, body = await _answer(reader)
        error = json.loads(body)["error"]
        assert (status, "server" in headers, error["param"]) == (400, False, "max_tokens")
        # Over max_body_bytes: handed to aiohttp, which refuses it and ends the connection.
        writer.write(HEAD.replace(b"12", b"5000") + b"\r\n\r\n" + b" " * 5000)
        status, headers, body = await _answer(reader)
        assert status == 413 and "max_body_bytes=4096" in json.loads(body)["error"]["message"]
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # Connection: close is honoured.
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(_post(REQ, "bye", "Connection: close\r\n"))
        status, headers, _ = await _answer(reader)
        assert (status, headers.get("connection")) == (200, "close")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # Kept alive and idle: closed after keepalive_timeout, not before.
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(_post(REQ, "idle"))
        assert (await _answer(reader))[0] == 200
        answered = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert time.monotonic() - answered >= 0.9
        writer.close()


async def test_two_thousand_pipelined_bad_requests_get_two_thousand_answers_in_order(tmp_path):
    """Answers given at once must not nest one request inside the next (no recursion limit)."""
    async with proxy_process(tmp_path) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        requests = [HEAD.replace(b"12", b"3") + f"\r\nX-Request-Id: r{i}\r\n\r\n".encode() + b"[1]"
                    for i in range(2000)]
        writer.write(b"".join(requests) + _post(REQ, "last"))
        answers = [await _answer(reader) for _ in range(2001)]
        assert [s for s, _, _ in answers[:2000]] == [400] * 2000
        assert all(json.loads(b)["error"]["message"] == "request body must be a JSON object" for _, _, b in answers[:2000])
        assert (answers[-1][0], answers[-1][1]["x-request-id"]) == (200, "last")
        writer.close()
