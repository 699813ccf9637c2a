"""The proxy's process model: SIGHUP reloads (fresh worker processes on the same listening socket)
and SIGTERM stops, under a steady load, with not one request refused or stream cut.

The proxy runs as the supervisor runs it (`python -m openfuyao_pd.proxy --config FILE`, the
master); the engines are simulators in the test's loop, so the load's clients and the engines
share it while the proxy's processes run on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from openfuyao_pd.sim.server import SimRunner, free_port
from proxy_helpers import CONNECTOR_ROOT, backend_entry, sim_config

PROMPT = "The prefill instance computes the key and value cache of this prompt. " * 4


@dataclass
class Master:
    proc: subprocess.Popen[bytes]
    url: str
    config: Path
    plan: dict[str, Any]
    log: Path

    def write(self, **changes: Any) -> None:
        self.plan = {**self.plan, **changes}
        self.config.write_text(json.dumps(self.plan))

    def log_events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            start = line.find('{"event": ')
            if start >= 0:
                with contextlib.suppress(ValueError):
                    event = json.loads(line[start:])
                    if event.get("event") == name:
                        out.append(event)
        return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the master) counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


async def health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/health", headers={"Connection": "close"}) as resp:
        return await resp.json()


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def master(tmp_path: Path, options: dict[str, Any] | None = None,
                 n_decode: int = 1) -> AsyncIterator[tuple[Master, list[SimRunner]]]:
    storage = str(tmp_path / "kv")
    sims = [await SimRunner(sim_config("nixl", "prefill", 0, storage)).start(),
            await SimRunner(sim_config("nixl", "decode", 0, storage, decode_step_ms=15.0)).start(),
            await SimRunner(sim_config("nixl", "decode", 1, storage, decode_step_ms=15.0)).start()]
    port = free_port()
    plan = {"address": "127.0.0.1", "port": port, "protocol": "nixl", "model": "tiny-llama",
            "prefill": [backend_entry(sims[0], "prefill", 0, "nixl")],
            "decode": [backend_entry(sims[1 + i], "decode", i, "nixl") for i in range(n_decode)],
            "options": {"health_interval": 0.5, "drain_timeout": 20.0, **(options or {})}}
    config = tmp_path / "proxy.json"
    config.write_text(json.dumps(plan))
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "openfuyao_pd.proxy", "--config", str(config)],
                                env={**os.environ, "PYTHONPATH": CONNECTOR_ROOT}, stdout=out, stderr=subprocess.STDOUT)
    m = Master(proc, f"http://127.0.0.1:{port}", config, plan, log)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until(lambda: _status_ok(session, m.url), 30, "the proxy to listen")
        yield m, sims
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for sim in sims:
            await sim.stop()


async def _status_ok(session: aiohttp.ClientSession, url: str) -> bool:
    return (await health(session, url)).get("status") == "ok"


@dataclass
class Load:
    """Closed-loop clients on kept-alive connections: half stream, half not."""

    url: str
    ok: int = 0
    streams_ok: int = 0
    failures: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    async def client(self, stream: bool, stop: asyncio.Event, max_requests: int) -> None:
        body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 24, "stream": stream}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(max_requests):
                if stop.is_set():
                    return
                try:
                    async with session.post(self.url + "/v1/completions", json=body) as resp:
                        raw = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, OSError) as exc:
                    self.failures.append(f"{'stream' if stream else 'plain'}: {type(exc).__name__}: {exc}")
                    continue
                problem = check_answer(status, raw, stream)
                if problem:
                    self.failures.append(problem)
                elif stream:
                    self.streams_ok += 1
                else:
                    self.ok += 1


def check_answer(status: int, raw: bytes, stream: bool) -> str:
    """'' for a complete answer, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}: {raw[:200]!r}"
    if not stream:
        data = json.loads(raw)
        return "" if data.get("choices") and data["choices"][0].get("text") else f"no text: {raw[:200]!r}"
    events = [b[6:] for b in raw.decode().split("\n\n") if b.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream cut: {len(events)} events, last {events[-1:]!r}"
    if any('"error"' in e for e in events):
        return "stream carries an error event"
    tokens = sum(1 for e in events[:-1] if json.loads(e)["choices"][0].get("text"))
    return "" if tokens == 24 else f"stream of {tokens} tokens, not 24"


async def test_sighup_reloads_under_load_without_a_failure_and_sigterm_drains(tmp_path):
    async with master(tmp_path) as (m, sims), aiohttp.ClientSession() as session:
        first = await health(session, m.url)
        assert first["generation"] == 0 and first["pid"] != m.proc.pid  # a worker answers, not the master
        load = Load(m.url)
        stop = asyncio.Event()
        clients = [asyncio.create_task(load.client(stream=i % 2 == 0, stop=stop, max_requests=2000))
                   for i in range(4)]
        old_pids = {first["pid"]}
        try:
            for generation in (1, 2, 3):
                await asyncio.sleep(2.0)
                if generation == 2:  # a config change: the reloaded workers read the file again
                    m.write(decode=[*m.plan["decode"], backend_entry(sims[2], "decode", 1, "nixl")])
                m.proc.send_signal(signal.SIGHUP)

                async def reloaded(g: int = generation) -> bool:
                    return (await health(session, m.url))["generation"] == g

                await wait_until(reloaded, 30, f"generation {generation}")
                now = await health(session, m.url)
                assert now["pid"] not in old_pids and alive(now["pid"])
                # The old workers finish what they have and exit.
                await wait_until(lambda: _all_gone(old_pids), 30, f"old workers {old_pids} to exit")
                old_pids.add(now["pid"])
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 0 and load.streams_ok > 0
        async with session.get(m.url + "/v1/instances") as resp:
            names = {i["name"] for i in (await resp.json())["instances"]}
        assert names == {"prefill-0", "decode-0", "decode-1"}  # generation 2 read the new file
        assert m.proc.poll() is None
        assert [e["generation"] for e in m.log_events("reloaded")] == [1, 2, 3]

        # A file that does not validate: the reload is refused, the workers in place keep serving.
        m.config.write_text("{not json")
        serving = (await health(session, m.url))["pid"]
        m.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: _has_event(m, "reload_failed"), 30, "reload_failed")
        after = await health(session, m.url)
        assert after["generation"] == 3 and after["pid"] == serving

        # SIGTERM: a stream already running completes; then the master exits 0 and no worker is left.
        body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 60, "stream": True}
        async with aiohttp.ClientSession() as other:
            async with other.post(m.url + "/v1/completions", json=body) as resp:
                first_chunk = await resp.content.readany()
                m.proc.send_signal(signal.SIGTERM)
                raw = first_chunk + await resp.read()
            assert resp.status == 200 and raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw
            assert raw.count(b'"text"') == 60  # every token of the stream, none cut
        assert await asyncio.to_thread(m.proc.wait, 30) == 0
        assert not any(alive(p) for p in old_pids)
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await health(session, m.url)
            raise AssertionError("something still answers on the port after SIGTERM")


async def _all_gone(pids: set[int]) -> bool:
    return not any(alive(p) for p in pids)


async def _has_event(m: Master, name: str) -> bool:
    return bool(m.log_events(name))


async def test_master_killed_leaves_no_worker(tmp_path):
    """SIGKILL of the master (a supervisor's last resort): its workers see the pipe close and exit."""
    async with master(tmp_path) as (m, _sims), aiohttp.ClientSession() as session:
        worker = (await health(session, m.url))["pid"]
        m.proc.kill()
        m.proc.wait(10)
        await wait_until(lambda: _all_gone({worker}), 30, f"worker {worker} to exit")


async def test_a_dead_worker_is_replaced_and_its_port_never_refuses(tmp_path):
    """SIGKILL of a worker: the master starts another on the socket it keeps, so connections made
    meanwhile wait in its queue instead of being refused."""
    async with master(tmp_path) as (m, _sims), aiohttp.ClientSession() as session:
        worker = (await health(session, m.url))["pid"]
        os.kill(worker, signal.SIGKILL)
        answer = await health(session, m.url)  # connects while no worker listens yet
        assert answer["pid"] != worker and answer["generation"] == 0
        assert [e["pid"] for e in m.log_events("worker_died")] == [worker]
        body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 4}
        async with session.post(m.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
