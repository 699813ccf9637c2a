"""The KV-leak watchdog: its rule on made-up samples, its config errors, and real simulators.

A simulator with the `stuck-kv` fault (KV usage high while it serves nothing) is flagged; a
busy one whose KV is just as full while it runs requests is not; `recycle` drains through the
proxy API, restarts and undrains."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from openfuyao_pd import watchdog as wd

CFG = wd.Config(targets=(wd.Target("decode-0", "http://x/metrics"),), threshold=0.5, window_s=60)


def test_stuck_only_after_the_whole_window_idle_and_full() -> None:
    t = wd.Track("decode-0")
    full_idle = wd.Sample(0.9, 0, 0)
    assert not wd.observe(t, full_idle, 0.0, CFG) and not t.stuck
    assert not wd.observe(t, full_idle, 59.0, CFG)
    assert wd.observe(t, full_idle, 60.0, CFG) and t.stuck  # just became stuck: act once
    assert not wd.observe(t, full_idle, 90.0, CFG) and t.stuck and t.flagged_total == 1
    # a request (running or waiting) or a usage below the threshold starts the window again
    for sample in (wd.Sample(0.9, 1, 0), wd.Sample(0.9, 0, 2), wd.Sample(0.49, 0, 0)):
        wd.observe(t, full_idle, 0.0, CFG)
        assert not wd.observe(t, sample, 100.0, CFG) and not t.stuck and t.idle_full_since is None


def test_parse_metrics_sums_engines_and_takes_the_fullest_cache() -> None:
    text = ('# HELP vllm:kv_cache_usage_perc x\nvllm:kv_cache_usage_perc{engine="0"} 0.2\n'
            'vllm:kv_cache_usage_perc{engine="1"} 0.8\nvllm:num_requests_running{engine="0"} 0\n'
            'vllm:num_requests_running{engine="1"} 3\nvllm:num_requests_waiting{engine="0"} 1\n')
    assert wd.parse_metrics(text) == wd.Sample(0.8, 3.0, 1.0)
    with pytest.raises(ValueError, match="no vllm:kv_cache_usage_perc"):
        wd.parse_metrics("up 1\n")


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "'instances' must be a non-empty list"),
    ({"instances": [{"name": "d"}]}, "instances[0] needs 'name' and 'metrics_url'"),
    ({"instances": [{"name": "d", "metrics_url": "u"}], "threshold": 2}, "threshold 2.0 must be above 0"),
    ({"instances": [{"name": "d", "metrics_url": "u"}], "action": "kill"}, "action 'kill' is not one of"),
    ({"instances": [{"name": "d", "metrics_url": "u"}], "action": "recycle"}, "needs proxy_url and restart_argv"),
])
def test_config_errors_are_one_line(doc: dict, message: str) -> None:
    with pytest.raises(wd.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        wd.parse_config(doc)


def test_cli_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.json"
    bad.write_text('{"instances": []}')
    assert wd.main(["--config", str(bad), "--once"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


async def _keep_busy(url: str, stop: asyncio.Event) -> None:
    async with ClientSession() as session:
        while not stop.is_set():
            body = {"model": "tiny-llama", "prompt": "busy " * 90, "max_tokens": 40}
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()


async def test_flags_the_stuck_kv_simulator_and_not_the_busy_one(sim_factory, tmp_path: Path) -> None:
    stuck = await sim_factory("decode", "none", faults=["stuck-kv:0.9"])
    # 16 blocks of 16 tokens: a 90-word prompt and 40 tokens take 9 of them while it runs.
    busy = await sim_factory("decode", "none", decode_step_ms=40, kv_capacity_blocks=16)
    cfg = wd.Config(targets=(wd.Target("decode-0", f"{stuck}/metrics"), wd.Target("decode-1", f"{busy}/metrics")),
                    threshold=0.5, window_s=1.0, interval_s=0.2, state_file=str(tmp_path / "state.json"),
                    prom_file=str(tmp_path / "watchdog.prom"))
    stop = asyncio.Event()
    load = [asyncio.create_task(_keep_busy(busy, stop)) for _ in range(2)]
    tracks: dict[str, wd.Track] = {}
    busy_usage: list[float] = []
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 2.5:
            await asyncio.to_thread(wd.one_round, cfg, tracks)
            busy_usage.append(tracks["decode-1"].kv_usage or 0.0)
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
    assert tracks["decode-0"].stuck and tracks["decode-0"].flagged_total == 1
    assert not tracks["decode-1"].stuck and tracks["decode-1"].flagged_total == 0
    assert max(busy_usage) >= 0.5  # the busy one's cache was as full; it ran requests
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["instances"]["decode-0"]["stuck"] is True and state["instances"]["decode-1"]["stuck"] is False
    prom = (tmp_path / "watchdog.prom").read_text()
    assert 'pd_watchdog_kv_stuck{instance="decode-0"} 1' in prom
    assert 'pd_watchdog_kv_stuck{instance="decode-1"} 0' in prom


async def test_recycle_drains_restarts_and_undrains(sim_factory, tmp_path: Path) -> None:
    stuck = await sim_factory("decode", "none", faults=["stuck-kv:0.9"])
    calls: list[str] = []

    async def admin(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        return web.json_response({"name": request.match_info["name"]})

    app = web.Application()
    app.router.add_post("/v1/instances/{name}/drain", admin)
    app.router.add_post("/v1/instances/{name}/undrain", admin)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    marker = tmp_path / "restarted"
    cfg = wd.Config(targets=(wd.Target("decode-0", f"{stuck}/metrics", "openfuyao-pd-decode-0"),),
                    threshold=0.5, window_s=0.0, action="recycle", proxy_url=f"http://127.0.0.1:{port}",
                    restart_argv=(sys.executable, "-c", f"open({str(marker)!r}, 'w').write('{{service}}')"))
    tracks: dict[str, wd.Track] = {}
    try:
        await asyncio.to_thread(wd.one_round, cfg, tracks)
    finally:
        await runner.cleanup()
    assert calls == ["POST /v1/instances/decode-0/drain", "POST /v1/instances/decode-0/undrain"]
    assert marker.read_text() == "openfuyao-pd-decode-0"
    assert tracks["decode-0"].recycles == 1 and tracks["decode-0"].last_action == "recycled: restart rc=0, undrain 200"


async def test_recycle_through_the_real_proxy_with_the_token_file(tmp_path: Path) -> None:
    """The role gives the watchdog the proxies' token in a 0600 file: without it the proxy
    refuses the drain (nothing restarted); with it the instance is drained, restarted, undrained."""
    from proxy_helpers import cluster

    async with cluster(tmp_path, "centralized", n_prefill=1, n_decode=1) as c:
        token = c.admin["Authorization"].split()[1]
        marker = tmp_path / "restarted"
        base = dict(targets=(wd.Target("decode-0", f"{c.decode[0].url}/metrics", "openfuyao-pd-decode-0"),),
                    threshold=0.5, window_s=0.0, action="recycle", proxy_urls=(c.url,),
                    restart_argv=(sys.executable, "-c", f"open({str(marker)!r}, 'w').write('{{service}}')"))
        no_token = wd.Config(**base, admin_token_file=str(tmp_path / "missing.token"))
        outcome = await asyncio.to_thread(wd.recycle, no_token.targets[0], no_token)
        assert outcome == f"not recycled: drain through {c.url} answered 401" and not marker.exists()
        token_file = tmp_path / "watchdog-admin.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        cfg = wd.Config(**base, admin_token_file=str(token_file))
        outcome = await asyncio.to_thread(wd.recycle, cfg.targets[0], cfg)
        assert outcome == "recycled: restart rc=0, undrain 200"
        assert marker.read_text() == "openfuyao-pd-decode-0"
        async with c.session.get(f"{c.url}/v1/instances") as resp:
            view = {i["name"]: i for i in (await resp.json())["instances"]}
        assert view["decode-0"]["draining"] is False


async def test_recycle_drains_on_every_proxy_and_backs_out_when_one_refuses(tmp_path: Path) -> None:
    calls: list[str] = []

    def admin_app(tag: str, drain_status: int) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            calls.append(f"{tag} {request.path.rsplit('/', 1)[1]} {request.headers.get('Authorization')}")
            status = drain_status if request.path.endswith("/drain") else 200
            return web.json_response({}, status=status)
        app = web.Application()
        app.router.add_post("/v1/instances/{name}/drain", handler)
        app.router.add_post("/v1/instances/{name}/undrain", handler)
        return app

    runners, urls = [], []
    for tag, status in (("a", 200), ("b", 200), ("c", 503)):
        runner = web.AppRunner(admin_app(tag, status))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
    token_file = tmp_path / "t"
    token_file.write_text("s3cret-token-of-the-proxies\n")
    target = wd.Target("decode-0", "http://x/metrics", "svc")
    restarts: list[list[str]] = []
    try:
        both = wd.Config(targets=(target,), action="recycle", proxy_urls=tuple(urls[:2]), restart_argv=("r",),
                         admin_token_file=str(token_file))
        assert await asyncio.to_thread(wd.recycle, target, both, restarts.append) == "recycled: restart rc=None, undrain 200 200"
        bearer = "Bearer s3cret-token-of-the-proxies"
        assert calls == [f"a drain {bearer}", f"b drain {bearer}", f"a undrain {bearer}", f"b undrain {bearer}"]
        calls.clear()
        refused = wd.Config(targets=(target,), action="recycle", proxy_urls=(urls[0], urls[2]), restart_argv=("r",),
                            admin_token_file=str(token_file))
        out = await asyncio.to_thread(wd.recycle, target, refused, restarts.append)
        assert out == f"not recycled: drain through {urls[2]} answered 503"
        assert calls == [f"a drain {bearer}", f"c drain {bearer}", f"a undrain {bearer}"]
        assert len(restarts) == 1  # only the first recycle restarted
    finally:
        for runner in runners:
            await runner.cleanup()
