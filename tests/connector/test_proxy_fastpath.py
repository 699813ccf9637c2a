"""The proxy's fast path (issue 14): JSON codec with and without orjson, the byte-level cached_tokens
patch, the lean upstream client's HTTP parsing, and the proxy end to end with and without the
optional speedups (orjson, uvloop)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfuyao_pd.proxy import protocols, relay
from openfuyao_pd.sim.server import free_port
from proxy_helpers import cluster

MODEL = "tiny-llama"
CONNECTOR = Path(__file__).resolve().parents[2] / "files" / "connector"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def load_codec(pure: bool) -> Any:
    """A private copy of proxy/codec.py, loaded with orjson (when installed) or as if it were not."""
    saved = os.environ.pop("PD_PROXY_PURE_PYTHON", None)
    if pure:
        os.environ["PD_PROXY_PURE_PYTHON"] = "1"
    try:
        spec = importlib.util.find_spec("openfuyao_pd.proxy.codec")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.pop("PD_PROXY_PURE_PYTHON", None)
        if saved is not None:
            os.environ["PD_PROXY_PURE_PYTHON"] = saved
    return module


CODECS = {"orjson": load_codec(pure=False), "json": load_codec(pure=True)}


@pytest.fixture(params=list(CODECS))
def any_codec(request):
    module = CODECS[request.param]
    if request.param != module.BACKEND:
        pytest.skip("orjson is not installed")
    return module


@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_codec_round_trips_like_the_standard_library(value):
    for module in CODECS.values():
        encoded = module.dumps(value)
        assert isinstance(encoded, bytes)
        assert json.loads(encoded) == value
        assert module.loads(json.dumps(value).encode()) == value


def test_codec_accepts_and_refuses_what_the_standard_library_does(any_codec):
    assert math.isnan(any_codec.loads(b'{"x": NaN}')["x"])  # orjson refuses NaN: falls back
    assert any_codec.dumps({"seed": 2**70}) == b'{"seed":1180591620717411303424}'  # beyond 64 bits: exact
    for bad in (b"{", b"\xff\xfe", b'{"a": }'):
        with pytest.raises(ValueError):
            any_codec.loads(bad)


# ------------------------------------------------------------------------------------- cached_tokens patch
usage_objects = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**4)},
    optional={"prompt_tokens_details": st.one_of(st.none(), st.fixed_dictionaries(
        {}, optional={"cached_tokens": st.one_of(st.none(), st.integers(0, 10**6)), "audio_tokens": st.integers()}))})


@settings(max_examples=400, deadline=None)
@given(usage=usage_objects, text=st.text(max_size=40), cached=st.integers(0, 10**6),
       compact=st.booleans())
def test_cached_tokens_patch_agrees_with_a_full_rewrite(usage, text, cached, compact):
    obj: dict[str, Any] = {"id": "cmpl-1", "choices": [{"text": text + '"prompt_tokens_details": {"cached_tokens": 1'}],
                           "usage": usage}
    data = json.dumps(obj, separators=(",", ":") if compact else None).encode()
    expected = json.loads(data)
    protocols.rewrite_usage(expected, cached)
    patched = protocols.patch_cached_tokens(data, cached)
    if patched is not None:  # patched in place: must equal the parsed-and-rewritten object
        assert json.loads(patched) == expected
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and list(details)[:1] == ["cached_tokens"]:
        assert patched is not None  # vLLM's own shape never needs the slow path


# ------------------------------------------------------------------------------------- relay parsing
def split_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=8).map(sorted)


async def parse(wire: bytes, cuts: list[int]) -> tuple[int, dict[str, str], bytes]:
    """Feed `wire` to a response parser in pieces cut at `cuts`; return status, headers and body."""
    conn = relay._Conn()
    resp = relay.Response(relay.Pool(1.0), ("127.0.0.1", 1), conn, 2.0)

    async def feed() -> None:
        last = 0
        for cut in [*cuts, len(wire)]:
            conn.data_received(wire[last:cut])
            last = cut
            await asyncio.sleep(0)

    feeder = asyncio.create_task(feed())
    await resp._start()
    body = await resp.read()
    await feeder
    return resp.status, dict(resp.headers), body


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in [*sizes, len(body)]:
        piece = body[pos:pos + size] if size else b""
        if piece:
            out += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
            pos += len(piece)
    rest = body[pos:]
    if rest:
        out += b"%x\r\n%s\r\n" % (len(rest), rest)
    return out + b"0\r\nX-Trailer: 1\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), sizes=st.lists(st.integers(1, 60), max_size=6), data=st.data(),
       use_chunked=st.booleans())
def test_relay_parses_bodies_cut_anywhere(body, sizes, data, use_chunked):
    if use_chunked:
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        wire += chunked(body, sizes)
    else:
        wire = b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\ncontent-type: application/json\r\n\r\n%s" % (
            len(body), body)
    cuts = data.draw(split_points(wire))
    status, headers, got = asyncio.run(parse(wire + b"HTTP/1.1 200 OK\r\n", cuts))  # + the next response's start
    assert got == body
    assert status == (200 if use_chunked else 503)
    assert headers["content-type"] in ("text/event-stream", "application/json")


def test_relay_rejects_what_is_not_http():
    with pytest.raises(relay.UpstreamProtocolError):
        asyncio.run(parse(b"SSH-2.0-OpenSSH\r\n\r\n", []))
    with pytest.raises(relay.UpstreamProtocolError):
        asyncio.run(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", []))
    # A status of digits str.isdigit() takes and int() refuses (latin-1 "\xb9" is "¹").
    with pytest.raises(relay.UpstreamProtocolError):
        asyncio.run(parse(b"HTTP/1.1 \xb9 OK\r\nContent-Length: 0\r\n\r\n", []))


async def test_relay_reuses_connections_and_survives_a_backend_closing_them():
    """Keep-alive: sequential requests share one connection; a kept connection the server closed
    is replaced without the caller seeing an error."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            body = await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            if body == b"close":
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = relay.Pool(1.0)
    try:
        for body in (b"one", b"two", b"close", b"after"):
            resp = await pool.post("127.0.0.1", port, "/x", body, {"X-Request-Id": "r"}, 2.0)
            assert (resp.status, await resp.read()) == (200, body)
            resp.release()
            await asyncio.sleep(0.05)  # let the server's close arrive after "close"
        assert connections == 2
        with pytest.raises(ValueError):
            await pool.post("127.0.0.1", port, "/x", b"", {"X-Evil": "a\r\nHost: b"}, 2.0)
        with pytest.raises(relay.UpstreamConnectError):
            await pool.post("127.0.0.1", free_port(), "/x", b"", {}, 2.0)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("pure", [False, True], ids=["speedups", "pure-python"])
async def test_proxy_process_with_and_without_speedups(tmp_path, pure):
    """The CLI proxy serves P→D (plain and streamed) on uvloop + orjson when installed, and on
    asyncio + json when they are not (PD_PROXY_PURE_PYTHON hides them)."""
    if not pure:
        pytest.importorskip("uvloop")
        pytest.importorskip("orjson")
    async with cluster(tmp_path, "nixl") as c:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(CONNECTOR)}
        env.pop("PD_PROXY_PURE_PYTHON", None)
        if pure:
            env["PD_PROXY_PURE_PYTHON"] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "openfuyao_pd.proxy", "--host", "127.0.0.1", "--port", str(port), "--protocol",
             "nixl", "--prefiller-hosts", "127.0.0.1", "--prefiller-ports", str(c.prefill[0].port),
             "--decoder-hosts", "127.0.0.1", "--decoder-ports", str(c.decode[0].port), "--log-level", "WARNING"],
            env=env, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    try:
                        async with session.get(url + "/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
                body = {"model": MODEL, "prompt": "hello " * 50, "max_tokens": 5, "ignore_eos": True}
                async with session.post(url + "/v1/completions", json=body) as r:
                    data = await r.json()
                    assert r.status == 200 and data["usage"]["completion_tokens"] == 5
                async with session.post(url + "/v1/completions", json={**body, "stream": True}) as r:
                    raw = await r.read()
                    assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n") and raw.count(b'"text"') == 5
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        expected = '"loop": "asyncio", "json": "json"' if pure else '"loop": "uvloop", "json": "orjson"'
        assert proc.returncode == 0 and expected in err, err
