"""Shared fixtures for tests of files/connector (simulator and proxy).

Stable names (other test files rely on them):

``sim_factory``  async factory, function scope. ``await sim_factory(role="decode",
    protocol="mooncake_v1", faults=[...], **config_overrides)`` starts an in-process
    simulator on a free loopback port and returns a :class:`SimHandle` — a ``str`` equal to
    its base URL (``http://127.0.0.1:PORT``) that also carries ``.engine`` (the SimEngine),
    ``.config``, ``.ports`` (``http``, and ``side``/``bootstrap`` where the protocol has
    them), ``.bootstrap_url`` (upstream mooncake producers) and ``async .stop()``.
    role: ``prefill`` (kv_producer) | ``decode`` (kv_consumer) | ``both`` (kv_both).
    protocol: ``mooncake_v1`` | ``nixl`` | ``mooncake`` | ``centralized`` | ``none``.
    All simulators of one test share one centralized KV directory (``sim_shared_dir``).
    Overrides are SimConfig fields (e.g. ``prefill_ms_per_token=1``, ``max_num_seqs=2``,
    ``scheduling_policy="priority"``, ``kv_hold_timeout_s=1``, ``mooncake="auto"``);
    mooncake defaults to ``off`` in-process (KV bytes then move over HTTP).
``sim_process_factory``  async factory: ``await sim_process_factory("serve", "m", "--kv-transfer-config", ...)``
    runs ``python -m openfuyao_pd.sim`` as a child process on a free port (``--port`` is
    added), waits for /health and returns ``(url, popen)``; killed at teardown.
``sim_shared_dir``  the per-test directory used as shared KV storage.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openfuyao_pd.sim.config import SimConfig
from openfuyao_pd.sim.server import SimRunner, free_port

CONNECTOR_NAMES = {
    "mooncake_v1": "MooncakeConnectorV1",
    "nixl": "NixlConnector",
    "mooncake": "MooncakeConnector",
    "centralized": "ExampleConnector",
}
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer", "both": "kv_both"}
CONNECTOR_DIR = Path(__file__).resolve().parents[2] / "files" / "connector"


class SimHandle(str):
    """The base URL of a running simulator, with handles to drive it."""

    runner: SimRunner

    @property
    def engine(self) -> Any:
        return self.runner.engine

    @property
    def config(self) -> SimConfig:
        return self.runner.engine.config

    @property
    def ports(self) -> dict[str, int]:
        return self.runner.engine.ports

    @property
    def bootstrap_url(self) -> str | None:
        port = self.ports.get("bootstrap")
        return f"http://127.0.0.1:{port}" if port else None

    async def stop(self) -> None:
        await self.runner.stop()


def kv_transfer_config(role: str, protocol: str, shared_dir: Path) -> dict[str, Any] | None:
    if protocol == "none":
        return None
    config: dict[str, Any] = {"kv_connector": CONNECTOR_NAMES[protocol], "kv_role": KV_ROLES[role]}
    if protocol == "centralized":
        config["kv_connector_extra_config"] = {"shared_storage_path": str(shared_dir)}
    return config


@pytest.fixture
def sim_shared_dir(tmp_path: Path) -> Path:
    path = tmp_path / "shared-kv"
    path.mkdir()
    return path


@pytest.fixture
async def sim_factory(sim_shared_dir: Path) -> AsyncIterator[Callable[..., Awaitable[SimHandle]]]:
    runners: list[SimRunner] = []

    async def factory(role: str = "decode", protocol: str = "mooncake_v1", *,
                      faults: list[str] | None = None, **overrides: Any) -> SimHandle:
        settings: dict[str, Any] = {
            "model": "tiny-llama", "host": "127.0.0.1", "port": 0, "mooncake": "off",
            "kv_transfer_config": kv_transfer_config(role, protocol, sim_shared_dir),
            "faults": list(faults or []), "in_process": True,
        }
        if protocol in ("mooncake_v1", "nixl"):
            settings["kv_port"] = 0
        if protocol == "mooncake" and role != "decode":
            settings["bootstrap_port"] = 0
        settings.update(overrides)
        runner = await SimRunner(SimConfig(**settings)).start()
        runners.append(runner)
        handle = SimHandle(runner.url)
        handle.runner = runner
        return handle

    yield factory
    for runner in runners:
        await runner.stop()


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {proc.returncode}")
            try:
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"simulator at {url} not healthy after {timeout}s")


@pytest.fixture
async def sim_process_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[str, subprocess.Popen]]]]:
    procs: list[subprocess.Popen] = []

    async def factory(*argv: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
        port = free_port()
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CONNECTOR_DIR),
                                                                               os.environ.get("PYTHONPATH")])),
                    **(env or {})}
        log = open(tmp_path / f"sim-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "openfuyao_pd.sim", *argv, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=full_env)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_healthy(url, proc)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            raise RuntimeError(f"{exc}; log:\n{(tmp_path / f'sim-{port}.log').read_text()}") from exc
        return url, proc

    yield factory
    for proc in procs:  # signal all first: Mooncake's shutdown takes about a second each
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
