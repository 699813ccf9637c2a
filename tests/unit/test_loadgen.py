"""loadgen against a real HTTP server on loopback: counts, pacing bounds, every failure kind."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from openfuyao_pd import loadgen

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartServer = Callable[[Handler], Awaitable[str]]


def completion(n: int) -> dict[str, object]:
    return {"id": f"cmpl-{n}", "object": "text_completion", "choices": [{"index": 0, "text": " jumps"}]}


@pytest.fixture
async def server() -> AsyncIterator[StartServer]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_all_ok_counts_and_payload(server: StartServer) -> None:
    seen: list[dict[str, object]] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(completion(len(seen)))

    url = await server(ok)
    report = await loadgen.run(url, "tiny", requests=12, rate=200, duration_s=30, timeout_s=5)
    assert (report.sent, report.failed, report.stopped_by) == (12, 0, "requests")
    assert len(seen) == 12
    assert {p["model"] for p in seen} == {"tiny"} and all(p["max_tokens"] == 8 for p in seen)


async def test_http_errors_and_bad_bodies_are_failures(server: StartServer) -> None:
    count = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        if count % 4 == 0:
            return web.json_response({"error": "backend drained"}, status=503)
        if count % 4 == 1:
            return web.json_response({"object": "text_completion"})  # no choices
        return web.json_response(completion(count))

    url = await server(flaky)
    report = await loadgen.run(url, "tiny", requests=8, rate=500, duration_s=30, timeout_s=5)
    doc = report.as_dict()
    assert doc["failed"] == 4 and doc["ok"] == 4
    assert doc["errors"] == {"HTTP 503": 2, "body has no choices": 2}
    assert doc["statuses"] == {"200": 6, "503": 2}


async def test_stream_without_done_is_a_failure(server: StartServer) -> None:
    count = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + json.dumps(completion(count)).encode() + b"\n\n")
        if count != 2:  # the second stream is cut short, like a backend killed mid-answer
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    url = await server(stream)
    report = await loadgen.run(url, "tiny", requests=3, rate=500, duration_s=30, timeout_s=5, stream=True)
    assert report.failed == 1
    assert report.as_dict()["failures"][0]["error"] == "stream ended without [DONE]"


async def test_timeout_is_a_failure_and_run_still_ends(server: StartServer) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(completion(0))

    url = await server(slow)
    report = await loadgen.run(url, "tiny", requests=2, rate=100, duration_s=30, timeout_s=0.3)
    assert report.failed == 2
    assert all(o.error == "timeout after 0.3s" for o in report.outcomes)


async def test_connection_refused_is_a_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on the port any more
    report = await loadgen.run(f"http://127.0.0.1:{port}", "tiny", requests=2, rate=100,
                               duration_s=30, timeout_s=2)
    assert report.failed == 2
    assert all(o.error and o.error.startswith("ClientConnectorError") for o in report.outcomes)


async def test_connect_retries_reach_a_server_that_comes_up_and_are_counted() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(completion(0))

    async def late_server() -> web.AppRunner:
        await asyncio.sleep(0.8)  # after the first attempt and the first retry (0.5 s) were refused
        app = web.Application()
        app.router.add_post("/v1/completions", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    starting = asyncio.create_task(late_server())
    report = await loadgen.run(f"http://127.0.0.1:{port}", "tiny", requests=1, rate=100,
                               duration_s=30, timeout_s=10, connect_retries=3)
    runner = await starting
    await runner.cleanup()
    assert report.failed == 0 and report.outcomes[0].connect_retries == 2
    assert report.as_dict()["connect_retries"] == 2
    # Without retries the same refusal is a failure (the default).
    refused = await loadgen.run(f"http://127.0.0.1:{port}", "tiny", requests=1, rate=100, duration_s=30, timeout_s=2)
    assert refused.failed == 1 and refused.outcomes[0].connect_retries == 0


async def test_stop_file_and_duration_bound_the_run(server: StartServer, tmp_path: Path) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response(completion(0))

    url = await server(ok)
    stop = tmp_path / "stop"
    stop.touch()
    report = await loadgen.run(url, "tiny", requests=1000, rate=50, duration_s=60, timeout_s=5, stop_file=stop)
    assert report.sent == 0 and report.stopped_by == "stop-file"
    report = await loadgen.run(url, "tiny", requests=1000, rate=20, duration_s=0.5, timeout_s=5)
    assert report.stopped_by == "duration"
    assert 0 < report.sent < 1000 and report.failed == 0


def test_check_stream_error_event() -> None:
    lines = [b'data: {"error": "kv transfer failed"}\n', b"\n", b"data: [DONE]\n"]
    assert loadgen.check_stream(lines) == "stream error event: kv transfer failed"
    assert loadgen.check_stream([b": keepalive\n"]) == "stream carried no data events"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "127.0.0.1:9090"], "must start with http://"),
        (["--url", "http://x", "--rate", "0"], "--rate must be positive"),
        (["--url", "http://x", "--requests", "0"], "--requests must be at least 1"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        loadgen.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_main_writes_report_and_exit_code(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r" / "load.json"
    rc = loadgen.main(["--url", f"http://127.0.0.1:{port}", "--requests", "1", "--rate", "10",
                       "--timeout", "2", "--report", str(out)])
    assert rc == 1
    assert json.loads(out.read_text())["failed"] == 1
