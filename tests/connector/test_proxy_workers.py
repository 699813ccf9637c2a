"""`workers: N`: several worker processes on one port whose routing state, instance API and
metrics stay those of one proxy (proxy/shared.py).

Which worker takes a connection is decided at accept time (proxy/accept.py), so each check
spreads its requests over many fresh connections and first makes sure that both workers answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from typing import Any

import aiohttp
from test_proxy_reload import PROMPT, Master, health, master, wait_until

CLOSE = {"Connection": "close"}  # one connection per request: a worker is picked each time


async def pids_answering(url: str, held: int = 8) -> set[int]:
    """The workers behind `held` connections kept open together. Balanced accepting (accept.py)
    never lets a worker hold two connections more than another, so both answer; fresh connections
    opened one after another may all go to one worker on an idle host with many cores."""
    async with contextlib.AsyncExitStack() as stack:
        pids = set()
        for _ in range(held):
            session = await stack.enter_async_context(aiohttp.ClientSession())
            async with session.get(url + "/health") as resp:  # kept alive until the stack closes
                pids.add((await resp.json())["pid"])
        return pids


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def instances(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    async with session.get(url + "/v1/instances", headers=CLOSE) as resp:
        return {i["name"]: i for i in (await resp.json())["instances"]}


def decodes_in_log(m: Master, name: str) -> int:
    return sum(1 for e in m.log_events("request") if e.get("decode") == name)


async def test_two_workers_share_counts_instances_and_metrics(tmp_path):
    async with master(tmp_path, {"workers": 2}, n_decode=2) as (m, sims), aiohttp.ClientSession() as session:
        token = tmp_path / "admin.token"
        token.write_text("s3cret-token-for-the-test\n")
        token.chmod(0o600)
        m.write(admin_token_file=str(token))
        m.proc.send_signal(signal.SIGHUP)  # the token file is read by the reloaded workers

        async def generation_one() -> bool:
            return {(await health(session, m.url))["generation"] for _ in range(10)} == {1}

        await wait_until(generation_one, 30, "generation 1")
        workers = await pids_answering(m.url)
        assert len(workers) == 2, workers
        admin = {"Authorization": "Bearer s3cret-token-for-the-test", **CLOSE}

        # In-flight counts: 12 long streams over 12 connections (both workers); any worker's
        # /metrics and /v1/instances count all 12.
        body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 200, "stream": True}
        async with contextlib.AsyncExitStack() as stack:
            streams = []
            for _ in range(12):
                client = await stack.enter_async_context(aiohttp.ClientSession())
                resp = await stack.enter_async_context(client.post(m.url + "/v1/completions", json=body))
                assert resp.status == 200
                await resp.content.readany()
                streams.append(resp)
            for _ in range(4):
                async with session.get(m.url + "/metrics", headers=CLOSE) as r:
                    text = await r.text()
                assert metric(text, "pd_proxy_backend_inflight_requests", role="decode") == 12
                listed = await instances(session, m.url)
                assert listed["decode-0"]["inflight_requests"] + listed["decode-1"]["inflight_requests"] == 12
                # least_load over the shared counts: the two decodes split the 12 evenly.
                assert listed["decode-0"]["inflight_requests"] == 6, listed
            for resp in streams:
                resp.close()

        # Metrics: N requests spread over both workers add up in one scrape.
        async with session.get(m.url + "/metrics", headers=CLOSE) as r:
            before = metric(await r.text(), "pd_proxy_requests_total", outcome="success")
        plain = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 2}
        for _ in range(30):
            async with session.post(m.url + "/v1/completions", json=plain, headers=CLOSE) as r:
                assert r.status == 200
        for _ in range(3):
            async with session.get(m.url + "/metrics", headers=CLOSE) as r:
                text = await r.text()
            assert metric(text, "pd_proxy_requests_total", outcome="success") == before + 30
            assert metric(text, "pd_proxy_stage_seconds_count", stage="e2e") >= before + 30

        # The instance API: a drain taken by one worker holds for every worker.
        async with session.post(m.url + "/v1/instances/decode-0/drain", headers=admin) as r:
            assert r.status == 200 and (await r.json())["drained"] is True
        for _ in range(10):
            assert (await instances(session, m.url))["decode-0"]["draining"] is True
        routed = decodes_in_log(m, "decode-0")
        for _ in range(20):
            async with session.post(m.url + "/v1/completions", json=plain, headers=CLOSE) as r:
                assert r.status == 200
        assert decodes_in_log(m, "decode-0") == routed  # no worker sent one there
        async with session.post(m.url + "/v1/instances/decode-0/undrain", headers=admin) as r:
            assert r.status == 200
        for _ in range(10):
            assert (await instances(session, m.url))["decode-0"]["draining"] is False

        # delete and add again: every worker sees each change.
        async with session.delete(m.url + "/v1/instances/decode-1", headers=admin) as r:
            assert r.status == 200
        for _ in range(10):
            assert set(await instances(session, m.url)) == {"prefill-0", "decode-0"}
        entry = {"name": "decode-1", "role": "decode", "address": "127.0.0.1", "port": sims[2].port}
        async with session.post(m.url + "/v1/instances", json=entry, headers=admin) as r:
            assert r.status == 201, await r.text()

        async def everywhere() -> bool:
            for _ in range(10):
                listed = await instances(session, m.url)
                if "decode-1" not in listed or listed["decode-1"]["ejected"]:
                    return False
            return True

        await wait_until(everywhere, 15, "decode-1 routable on every worker")

        # A reload keeps the counters (the old workers' values stay in the sums); the instance list
        # is the config file's again (decode-1 was deleted and added back; a deleted one would return).
        async with session.get(m.url + "/metrics", headers=CLOSE) as r:
            total = metric(await r.text(), "pd_proxy_requests_total")
        m.proc.send_signal(signal.SIGHUP)

        async def generation_two() -> bool:
            return {(await health(session, m.url))["generation"] for _ in range(10)} == {2}

        await wait_until(generation_two, 30, "generation 2")
        await asyncio.sleep(0)
        async with session.get(m.url + "/metrics", headers=CLOSE) as r:
            assert metric(await r.text(), "pd_proxy_requests_total") >= total
        assert set(await instances(session, m.url)) == {"prefill-0", "decode-0", "decode-1"}
        async with session.post(m.url + "/v1/instances/decode-1/drain", headers=admin) as r:
            assert r.status == 200
        m.proc.send_signal(signal.SIGHUP)

        async def generation_three() -> bool:
            return {(await health(session, m.url))["generation"] for _ in range(10)} == {3}

        await wait_until(generation_three, 30, "generation 3")
        for _ in range(10):
            assert (await instances(session, m.url))["decode-1"]["draining"] is False
        m.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(m.proc.wait, 30) == 0
        assert json.loads(m.config.read_text())["options"]["workers"] == 2


def test_registry_adds_up_other_workers_snapshots():
    from openfuyao_pd.proxy import metrics as prom

    def registry() -> tuple[prom.Registry, Any, Any, Any, Any]:
        reg = prom.Registry()
        return (reg, reg.counter("c_total", "c", ("k",)), reg.histogram("h_seconds", "h", (), buckets=(0.1, 1.0)),
                reg.gauge("g_merged", "g", (), merge=True), reg.gauge("g_own", "g", ()))

    mine, c, h, g, own = registry()
    other, c2, h2, g2, own2 = registry()
    c.inc("a", amount=2)
    c2.inc("a", amount=3)
    c2.inc("b")
    h.observe(value=0.05)
    h2.observe(value=0.5)
    g.set(value=4)
    g2.set(value=6)
    own.set(value=1)
    own2.set(value=100)
    snap = json.loads(json.dumps(other.snapshot()))  # what goes through the file
    text = mine.render([(True, snap)])
    assert 'c_total{k="a"} 5.0' in text and 'c_total{k="b"} 1.0' in text
    assert 'h_seconds_bucket{le="0.1"} 1.0' in text and 'h_seconds_bucket{le="1.0"} 2.0' in text
    assert "h_seconds_count 2.0" in text
    assert "g_merged 10.0" in text and "g_own 1.0" in text  # a gauge of this worker's own view is not added
    gone = mine.render([(False, snap)])  # an exited worker: its counts stay, its gauges do not
    assert 'c_total{k="a"} 5.0' in gone and "g_merged 4.0" in gone
    assert mine.render() == mine.render([])


def test_layerwise_refuses_several_workers():
    import pytest
    from openfuyao_pd.proxy.config import ConfigError, build_config

    plan = {"protocol": "mooncake_layerwise", "decode": [{"address": "127.0.0.1", "port": 9}], "options": {"workers": 2}}
    with pytest.raises(ConfigError, match=r"options\.workers must be 1 with protocol mooncake_layerwise"):
        build_config(plan)
    assert build_config({**plan, "options": {"workers": 1}}).options["workers"] == 1


def test_a_live_masters_directory_is_kept_even_where_its_pid_looks_dead(tmp_path: Any) -> None:
    """remove_stale across pid namespaces: the pid in master.pid may name nobody here, the flock decides."""
    import fcntl
    import os

    from openfuyao_pd.proxy import shared

    live, gone = tmp_path / "pd-proxy-live", tmp_path / "pd-proxy-gone"
    for directory in (live, gone):
        directory.mkdir()
        (directory / "master.pid").write_text("2147480000")  # no such process on this host
    owner = os.open(live / "master.pid", os.O_RDONLY)
    fcntl.flock(owner, fcntl.LOCK_SH)  # what State.create holds for the master's life
    try:
        shared.remove_stale(str(tmp_path))
        assert live.is_dir() and not gone.exists()
    finally:
        os.close(owner)
    shared.remove_stale(str(tmp_path))
    assert not live.exists()
