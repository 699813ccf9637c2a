"""The proxy's edges: the authenticated instance API, slow and hostile clients.

The proxy runs as its own process (`python -m openfuyao_pd.proxy`) so its log can be grepped
for the admin token and its RSS read from /proc; the decode is a simulator process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openfuyao_pd.sim.server import free_port
from proxy_helpers import CONNECTOR_ROOT, spawn_sim
from test_proxy_flow import LONG, MODEL


@dataclass
class ProxyProc:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    token: str
    token_file: Path
    decode_port: int

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def proxy_process(tmp_path: Path, options: dict[str, Any] | None = None,
                        token_file: bool = True) -> AsyncIterator[ProxyProc]:
    sim, decode_port = await spawn_sim("centralized", "decode", str(tmp_path / "kv"))
    token = secrets.token_urlsafe(32)
    tfile = tmp_path / "admin.token"
    tfile.write_text(token + "\n")
    tfile.chmod(0o600)
    port = free_port()
    config = {"address": "127.0.0.1", "port": port, "protocol": "centralized", "model": MODEL,
              "decode": [{"name": "decode-0", "address": "127.0.0.1", "port": decode_port}],
              "options": {"health_interval": 0.5, **(options or {})}}
    if token_file:
        config["admin_token_file"] = str(tfile)
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "openfuyao_pd.proxy", "--config", str(path),
                                 "--log-level", "DEBUG"], env={**os.environ, "PYTHONPATH": CONNECTOR_ROOT},
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"proxy did not start: {log.read_text()}")
        yield ProxyProc(url, port, proc, log, token, tfile, decode_port)
    finally:
        for p in (proc, sim):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()


async def _call(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, str]:
    async with session.request(method, url, **kw) as resp:
        raw = await resp.read()
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = raw.decode(errors="replace")
        return resp.status, data, resp.headers.get("Content-Type", "")


# ------------------------------------------------------------------------------------- admin API
async def test_mutations_need_the_token_and_it_is_never_logged(tmp_path):
    async with proxy_process(tmp_path) as p, aiohttp.ClientSession() as s:
        _, before, _ = await _call(s, "GET", p.url + "/v1/instances")
        new = {"name": "decode-x", "role": "decode", "address": "127.0.0.1", "port": p.decode_port + 1}
        attempts = [("POST", "/v1/instances", {"json": new}), ("POST", "/v1/instances/decode-0/drain?timeout=0", {}),
                    ("POST", "/v1/instances/decode-0/undrain", {}), ("DELETE", "/v1/instances/decode-0?timeout=0", {})]
        for method, path, kw in attempts:
            status, data, ctype = await _call(s, method, p.url + path, **kw)
            assert status == 401 and ctype.startswith("application/json") and data["error"]["code"] == 401, (path, data)
            status, data, _ = await _call(s, method, p.url + path, headers={"Authorization": "Bearer wrong-token"},
                                          **kw)
            assert status == 403 and data["error"]["message"] == "wrong admin token", (path, data)
            status, _, _ = await _call(s, method, p.url + path, headers={"Authorization": p.token}, **kw)
            assert status == 401  # no "Bearer" scheme
        _, after, _ = await _call(s, "GET", p.url + "/v1/instances")
        assert after == before  # nothing changed: no decode-x, decode-0 neither draining nor removed
        assert (await _call(s, "GET", p.url + "/health"))[0] == 200
        assert (await _call(s, "GET", p.url + "/metrics"))[0] == 200
        # With the token every call works.
        status, data, _ = await _call(s, "POST", p.url + "/v1/instances/decode-0/drain?timeout=0", headers=p.admin)
        assert status == 200 and data["draining"] is True
        status, data, _ = await _call(s, "POST", p.url + "/v1/instances/decode-0/undrain", headers=p.admin)
        assert status == 200 and data["draining"] is False
        status, data, _ = await _call(s, "POST", p.url + "/v1/instances", json=new, headers=p.admin)
        assert status == 201 and data["name"] == "decode-x"
        status, data, _ = await _call(s, "DELETE", p.url + "/v1/instances/decode-x?timeout=0", headers=p.admin)
        assert status == 200 and data["removed"] is True
        # A rotated token takes effect without a restart.
        p.token_file.write_text("rotated-" + secrets.token_hex(16))
        assert (await _call(s, "POST", p.url + "/v1/instances/decode-0/undrain", headers=p.admin))[0] == 403
        metrics = (await _call(s, "GET", p.url + "/metrics"))[1]
    log = p.log.read_text()
    assert "admin_denied" in log and "instance_added" in log  # the log is there, and verbose (DEBUG)
    assert p.token not in log and p.token not in metrics
    assert stat.S_IMODE(p.token_file.stat().st_mode) == 0o600


async def test_without_a_token_file_mutations_are_refused(tmp_path):
    async with proxy_process(tmp_path, token_file=False) as p, aiohttp.ClientSession() as s:
        status, data, _ = await _call(s, "DELETE", p.url + "/v1/instances/decode-0", headers=p.admin)
        assert status == 403 and "read-only" in data["error"]["message"]
        assert (await _call(s, "GET", p.url + "/v1/instances"))[1]["instances"][0]["name"] == "decode-0"


def test_a_token_file_others_can_read_stops_the_proxy(tmp_path):
    token = secrets.token_urlsafe(32)
    tfile = tmp_path / "admin.token"
    tfile.write_text(token)
    tfile.chmod(0o644)
    config = tmp_path / "proxy.json"
    config.write_text(json.dumps({"address": "127.0.0.1", "port": 1, "admin_token_file": str(tfile),
                                  "decode": [{"name": "d", "address": "127.0.0.1", "port": 2}]}))
    run = subprocess.run([sys.executable, "-m", "openfuyao_pd.proxy", "--config", str(config)],
                         env={**os.environ, "PYTHONPATH": CONNECTOR_ROOT}, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.strip() == f"pd-proxy: admin_token_file {tfile} has mode 0644: others may read it; run chmod 600 {tfile}"
    assert token not in run.stderr + run.stdout


# ------------------------------------------------------------------------------------- slow clients
async def _open(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    # The clock starts before the connect: the proxy's timeouts run from its accept, which a
    # starved client can see long after its connect returned (once: cut "after 0.41 s" of 1.0).
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if payload:
        writer.write(payload)
        await writer.drain()
    return reader, writer, opened


async def _closed_after(reader: asyncio.StreamReader, opened: float, limit: float) -> tuple[float, bytes]:
    """Seconds until the proxy closed the connection, and what it said before."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), limit):
            data += chunk
    return time.monotonic() - opened, data


async def test_slow_clients_are_cut_at_the_timeouts_while_a_normal_client_is_served(tmp_path):
    header_timeout, body_timeout = 1.0, 1.5
    async with proxy_process(tmp_path, {"header_timeout": header_timeout, "body_timeout": body_timeout}) as p:
        partial = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        short = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 500\r\n\r\n{\"model\": ")
        idle = [await _open(p.port, b"") for _ in range(300)]
        heads = [await _open(p.port, partial) for _ in range(20)]
        bodies = [await _open(p.port, short) for _ in range(20)]
        # A normal client, served while 340 connections hold the proxy.
        async with aiohttp.ClientSession() as s:
            started = time.monotonic()
            status, data, _ = await _call(s, "POST", p.url + "/v1/completions",
                                          json={"model": MODEL, "prompt": LONG, "max_tokens": 4})
            served_s = time.monotonic() - started
        assert status == 200 and data["choices"][0]["text"]
        results = await asyncio.gather(*(_closed_after(r, t, 20) for r, _, t in [*idle, *heads, *bodies]))
        idle_s = [s for s, _ in results[:300]]
        head_s = [s for s, _ in results[300:320]]
        body_s = [s for s, _ in results[320:]]
        print(f"\nnormal request served in {served_s * 1000:.0f} ms; 300 idle connections cut after "
              f"{min(idle_s):.2f}-{max(idle_s):.2f}s, 20 partial headers after {min(head_s):.2f}-{max(head_s):.2f}s "
              f"(header_timeout={header_timeout}), 20 short bodies after {min(body_s):.2f}-{max(body_s):.2f}s "
              f"(body_timeout={body_timeout}); proxy RSS {p.rss_kib() // 1024} MiB")
        # Never cut before the configured timeout; all cut (the wait above is bounded).
        assert min(idle_s + head_s) >= header_timeout * 0.9 and min(body_s) >= body_timeout * 0.9
        assert max(body_s) < body_timeout + 5  # the 408 closes the connection (no 10 s lingering on it)
        for _, said in results[300:320]:
            assert said.startswith(b"HTTP/1.1 408 ") and b'"code": 408' in said
        for _, said in results[320:]:
            assert said.startswith(b"HTTP/1.1 408 ") and b"application/json" in said and b"body not received" in said
        for _, writer, _ in [*idle, *heads, *bodies]:
            writer.close()
        async with aiohttp.ClientSession() as s:
            metrics = (await _call(s, "GET", p.url + "/metrics"))[1]
        assert 'pd_proxy_client_rejected_total{reason="header_timeout"} 320' in metrics
        assert 'pd_proxy_client_rejected_total{reason="body_timeout"} 20' in metrics


async def test_connections_beyond_the_cap_get_a_json_503(tmp_path):
    async with proxy_process(tmp_path, {"max_connections": 50, "header_timeout": 30}) as p:
        held = [await _open(p.port, b"") for _ in range(49)]
        async with aiohttp.ClientSession() as s:  # the 50th connection is this scrape itself
            assert "pd_proxy_client_connections 50.0" in (await _call(s, "GET", p.url + "/metrics"))[1]
        held.append(await _open(p.port, b""))
        await asyncio.sleep(0.2)
        reader, writer, opened = await _open(p.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        _, said = await _closed_after(reader, opened, 10)
        writer.close()
        head, _, body = said.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"application/json" in head
        assert "max_connections=50" in json.loads(body)["error"]["message"]
        for _, w, _ in held:
            w.close()
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as s:  # capacity is back once they left
            assert (await _call(s, "GET", p.url + "/health"))[0] == 200


# ------------------------------------------------------------------------------------- hostile bodies
HOSTILE: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("deep array", "/v1/completions", b"[" * 100_000 + b"]" * 100_000, {}, 400),
    ("deep object", "/v1/completions", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}, 400),
    ("deep inside prompt", "/v1/completions", b'{"model": "m", "prompt": ' + b"[" * 200 + b"]" * 200 + b"}", {}, 400),
    ("not JSON", "/v1/completions", b"{model: tiny", {}, 400),
    ("not UTF-8", "/v1/chat/completions", b'{"model": "\xff\xfe"}', {}, 400),
    ("not an object", "/v1/completions", b"[1, 2, 3]", {}, 400),
    ("stream as a string", "/v1/completions", b'{"model": "m", "prompt": "x", "stream": "no"}', {}, 400),
    ("n as a string", "/v1/completions", b'{"model": "m", "prompt": "x", "n": "2"}', {}, 400),
    ("max_tokens negative", "/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": -1}', {}, 400),
    ("max_tokens float", "/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": 1.5}', {}, 400),
    ("max_tokens bool", "/v1/chat/completions", b'{"model": "m", "messages": [], "max_tokens": true}', {}, 400),
    ("too large", "/v1/completions", b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}', {}, 413),
    ("declared too large", "/v1/completions", b"{}", {"Content-Length": "999999999999"}, 413),
    ("unknown endpoint", "/v1/nope", b"{}", {}, 404),
    ("admin add, garbage", "/v1/instances", b"\x00\x01", {}, 401),
]


async def test_hostile_bodies_get_json_4xx_and_the_proxy_stays_up(tmp_path):
    async with proxy_process(tmp_path, {"max_body_bytes": 1024 * 1024, "max_json_depth": 64}) as p:
        async with aiohttp.ClientSession() as s:
            await _call(s, "POST", p.url + "/v1/completions", json={"model": MODEL, "prompt": "warm", "max_tokens": 1})
            rss_before = p.rss_kib()
            for _ in range(5):
                for name, path, body, headers, want in HOSTILE:
                    if "Content-Length" in headers:
                        status, said = await _raw_post(p.port, path, body, headers["Content-Length"])
                        data, ctype = json.loads(said.partition(b"\r\n\r\n")[2]), "application/json"
                    else:
                        status, data, ctype = await _call(s, "POST", p.url + path, data=body,
                                                          headers={"Content-Type": "application/json"})
                    assert status == want and ctype.startswith("application/json"), (name, status, data)
                    assert data["error"]["code"] == want and data["error"]["message"], name
                for method, path, want in (("GET", "/v1/completions", 405), ("DELETE", "/health", 405),
                                           ("GET", "/nothing/here", 404), ("PUT", "/v1/models", 405)):
                    status, data, ctype = await _call(s, method, p.url + path)
                    assert (status, ctype) == (want, "application/json") and data["error"]["code"] == want, path
            rss_after = p.rss_kib()
            status, data, _ = await _call(s, "POST", p.url + "/v1/completions",
                                          json={"model": MODEL, "prompt": "still up", "max_tokens": 2})
            assert status == 200
            assert (await _call(s, "GET", p.url + "/health"))[0] == 200
        print(f"\nproxy RSS {rss_before // 1024} MiB before {5 * (len(HOSTILE) + 4)} hostile requests, "
              f"{rss_after // 1024} MiB after")
        assert rss_after - rss_before < 64 * 1024  # bounded: body size and depth are capped
        assert p.proc.poll() is None
    assert "Traceback" not in p.log.read_text()


async def _raw_post(port: int, path: str, body: bytes, length: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + body)
    await writer.drain()
    said = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            said += chunk
            if b"\r\n\r\n" in said and said.rstrip().endswith(b"}"):
                break
    writer.close()
    return int(said.split(b" ", 2)[1]), said


@pytest.mark.parametrize("body", [b"\xff" * 10, b"\x00{}", json.dumps({"prefil": []}).encode()])
def test_cli_refuses_bad_files_with_one_line(tmp_path, body):
    path = tmp_path / "proxy.json"
    path.write_bytes(body)
    run = subprocess.run([sys.executable, "-m", "openfuyao_pd.proxy", "--config", str(path)],
                         env={**os.environ, "PYTHONPATH": CONNECTOR_ROOT}, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("pd-proxy: ")


def test_depth_check_counts_levels_not_openers():
    from openfuyao_pd.proxy.limits import parse_body

    wide = json.dumps({"prompt": [[1]] * 500}).encode()  # 501 openers, depth 3
    assert isinstance(parse_body(wide, 4), dict)
    deep = json.dumps({"prompt": [[[[[1]]]]]}).encode()  # depth 6
    assert parse_body(deep, 5) == ("request body nests deeper than 5 levels", None)
    assert isinstance(parse_body(deep, 6), dict)
    in_string = json.dumps({"prompt": "[" * 1000}).encode()  # brackets inside a string are text
    assert isinstance(parse_body(in_string, 2), dict)


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                                           b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"])
async def test_malformed_http_gets_a_json_400(tmp_path, request_bytes):
    async with proxy_process(tmp_path) as p:
        reader, writer, opened = await _open(p.port, request_bytes)
        _, said = await _closed_after(reader, opened, 10)
        writer.close()
        head, _, body = said.partition(b"\r\n\r\n")
        assert head.split(b" ")[1].startswith(b"4") and b"application/json" in head, said[:300]
        assert json.loads(body)["error"]["code"] in (400, 414, 431)
        async with aiohttp.ClientSession() as s:
            assert (await _call(s, "GET", p.url + "/health"))[0] == 200
    assert "Traceback" not in p.log.read_text()
