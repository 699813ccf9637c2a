"""Start simulated P/D engines (openfuyao_pd.sim) and the proxy in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from openfuyao_pd.proxy.config import build_config
from openfuyao_pd.proxy.server import Proxy, start
from openfuyao_pd.sim.config import SimConfig
from openfuyao_pd.sim.server import SimRunner, free_port

CONNECTORS = {"mooncake_v1": "MooncakeConnectorV1", "nixl": "NixlConnector", "mooncake": "MooncakeConnector",
              "centralized": "ExampleConnector"}


def sim_config(protocol: str, role: str, index: int, storage: str, **knobs: Any) -> SimConfig:
    ktc: dict[str, Any] = {"kv_connector": CONNECTORS[protocol],
                           "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
                           "engine_id": f"{role}-{index}"}
    if protocol == "centralized":
        ktc["kv_connector_extra_config"] = {"shared_storage_path": storage}
    host = knobs.pop("host", "127.0.0.1")
    extra: dict[str, Any] = {}
    if protocol == "mooncake" and role == "prefill":
        extra["bootstrap_port"] = free_port(host)
    # The engine advertises its own port to peers (side channel), so it must know it up front.
    return SimConfig(model="tiny-llama", host=host, port=free_port(host), kv_transfer_config=ktc, mooncake="off",
                     seed=0, **extra, **knobs)  # one seed = the same weights everywhere


@dataclass
class Cluster:
    proxy: Proxy
    url: str
    prefill: list[SimRunner]
    decode: list[SimRunner]
    session: aiohttp.ClientSession
    extra: list[SimRunner] = field(default_factory=list)
    admin: dict[str, str] = field(default_factory=dict)  # the Authorization header of the instance API

    def backend(self, name: str) -> Any:
        return self.proxy.backends[name]

    def counters(self) -> dict[str, tuple[int, int]]:
        return {b.name: (b.inflight_requests, b.inflight_tokens) for b in self.proxy.backends.values()}

    async def post(self, body: dict[str, Any], path: str = "/v1/completions",
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        async with self.session.post(self.url + path, json=body, headers=headers) as resp:
            raw = await resp.read()
            try:
                data: Any = json.loads(raw)
            except ValueError:
                data = raw.decode(errors="replace")
            return resp.status, data, resp.headers.copy()

    async def stream(self, body: dict[str, Any], path: str = "/v1/completions") -> tuple[int, list[Any]]:
        """POST with stream=true; return the status and the decoded SSE events ("[DONE]" kept as a string)."""
        async with self.session.post(self.url + path, json={**body, "stream": True}) as resp:
            raw = await resp.read()
        events: list[Any] = []
        for block in raw.decode().split("\n\n"):
            block = block.strip()
            if block.startswith("data: "):
                payload = block[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
        return resp.status, events

    async def metrics(self) -> str:
        async with self.session.get(self.url + "/metrics") as resp:
            return await resp.text()

    async def sim_state(self, runner: SimRunner) -> dict[str, Any]:
        async with self.session.get(f"{runner.url}/sim/state") as resp:
            return await resp.json()

    async def set_faults(self, runner: SimRunner, faults: list[str]) -> None:
        async with self.session.post(f"{runner.url}/sim/faults", json={"faults": faults}) as resp:
            assert resp.status == 200, await resp.text()


def backend_entry(runner: SimRunner, role: str, index: int, protocol: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": f"{role}-{index}", "address": runner.config.host, "port": runner.port}
    if protocol == "mooncake" and role == "prefill":
        entry["options"] = {"bootstrap_port": runner.engine.ports["bootstrap"]}
    return entry


@contextlib.asynccontextmanager
async def cluster(tmp_path: Any, protocol: str = "mooncake_v1", n_prefill: int = 1, n_decode: int = 1,
                  options: dict[str, Any] | None = None, sim: dict[str, Any] | None = None,
                  prefill_sim: dict[str, Any] | None = None, decode_sim: dict[str, Any] | None = None,
                  proxy_host: str = "127.0.0.1") -> AsyncIterator[Cluster]:
    storage = str(tmp_path / "kv")
    sims: dict[str, list[SimRunner]] = {"prefill": [], "decode": []}
    runner = None
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        for role, count, knobs in (("prefill", n_prefill, prefill_sim), ("decode", n_decode, decode_sim)):
            for i in range(count):
                cfg = sim_config(protocol, role, i, storage, **{**(sim or {}), **(knobs or {})})
                sims[role].append(await SimRunner(cfg).start())
        token_file = tmp_path / "admin.token"
        token = secrets.token_urlsafe(32)
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        plan_proxy = {
            "admin_token_file": str(token_file),
            "address": proxy_host, "port": 0, "protocol": protocol, "model": "tiny-llama",
            "prefill": [backend_entry(r, "prefill", i, protocol) for i, r in enumerate(sims["prefill"])],
            "decode": [backend_entry(r, "decode", i, protocol) for i, r in enumerate(sims["decode"])],
            "options": {"health_interval": 0.2, "health_timeout": 1.0, "connect_timeout": 1.0,
                        "prefill_timeout": 10.0, "decode_timeout": 10.0, **(options or {})},
        }
        cfg = build_config(plan_proxy)
        runner, proxy, port = await start(cfg, proxy_host, 0)
        host = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
        yield Cluster(proxy=proxy, url=f"http://{host}:{port}", prefill=sims["prefill"], decode=sims["decode"],
                      session=session, admin={"Authorization": f"Bearer {token}"})
    finally:
        await session.close()
        if runner is not None:
            await runner.cleanup()
        for r in [*sims["prefill"], *sims["decode"]]:
            await r.stop()


CONNECTOR_ROOT = str(Path(__file__).resolve().parents[2] / "files" / "connector")


async def spawn_sim(protocol: str, role: str, storage: str, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    """A simulator in its own process (`pd-engine-sim serve`), so a test can SIGKILL it like a crashed engine."""
    port = free_port()
    ktc = {"kv_connector": CONNECTORS[protocol], "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
           "engine_id": f"{role}-spawned"}
    if protocol == "centralized":
        ktc["kv_connector_extra_config"] = {"shared_storage_path": storage}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openfuyao_pd.sim", "serve", "tiny-llama", "--host", "127.0.0.1", "--port", str(port),
         "--kv-transfer-config", json.dumps(ktc), "--seed", "0", "--sim-mooncake", "off", "--log-level", "error",
         *flags],
        env={**os.environ, "PYTHONPATH": CONNECTOR_ROOT}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status == 200:
                        return proc, port
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError("spawned simulator did not become healthy")
