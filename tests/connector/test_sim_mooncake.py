"""Real KV bytes between two simulator processes over Mooncake's TCP transfer engine."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from openfuyao_pd import kvxfer

pytestmark = pytest.mark.skipif(
    kvxfer.unavailable_reason() is not None,
    reason=f"needs mooncake-transfer-engine-non-cuda: {kvxfer.unavailable_reason()}")

PROMPT = " ".join(f"tok{i}" for i in range(100))


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, dict]:
    async with session.post(url + "/v1/completions", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def _sum(values: dict[str, float], name: str, contains: str = "") -> float:
    return sum(v for k, v in values.items() if k.split("{")[0] == name and contains in k)


def _ktc(connector: str, role: str, **extra: object) -> str:
    return json.dumps({"kv_connector": connector, "kv_role": role, **extra})


async def test_mooncake_v1_pull_moves_real_bytes_between_processes(sim_process_factory):
    from openfuyao_pd.sim.server import free_port

    kv_port = free_port()
    common = ["--sim-mooncake", "on", "--sim-kv-bytes-per-token", "4096", "--enforce-eager"]
    p_url, _ = await sim_process_factory("serve", "tiny-llama", *common, "--kv-transfer-config",
                                         _ktc("MooncakeConnectorV1", "kv_producer", kv_port=kv_port))
    d_url, _ = await sim_process_factory("--model", "tiny-llama", *common, "--kv-transfer-config",
                                         _ktc("MooncakeConnectorV1", "kv_consumer"))
    async with aiohttp.ClientSession() as session:
        status, _, pre = await _post(session, p_url, {
            "prompt": PROMPT, "max_tokens": 1, "min_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}})
        assert status == 200
        params = pre["kv_transfer_params"]
        assert params["remote_port"] == kv_port
        status, headers, out = await _post(session, d_url, {"prompt": PROMPT, "max_tokens": 4,
                                                            "kv_transfer_params": params})
        assert status == 200
        assert headers["x-sim-kv-source"] == "remote", headers
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 99
        p_metrics, d_metrics = await _metrics(session, p_url), await _metrics(session, d_url)
    size = 100 * 4096
    assert _sum(d_metrics, "pd_sim_kv_bytes_received_total", 'transport="mooncake"') == size
    assert _sum(p_metrics, "pd_sim_kv_bytes_sent_total", 'transport="mooncake"') == size
    assert _sum(d_metrics, "pd_sim_mooncake_enabled") == 1
    assert _sum(p_metrics, "pd_sim_kv_held_blocks") == 0


async def test_upstream_mooncake_push_writes_real_bytes(sim_process_factory):
    from openfuyao_pd.sim.server import free_port

    bootstrap = free_port()
    p_url, _ = await sim_process_factory(
        "serve", "tiny-llama", "--sim-mooncake", "on", "--kv-transfer-config",
        _ktc("MooncakeConnector", "kv_producer", engine_id="p0"),
        env={"VLLM_MOONCAKE_BOOTSTRAP_PORT": str(bootstrap)})
    d_url, _ = await sim_process_factory("serve", "tiny-llama", "--sim-mooncake", "on", "--kv-transfer-config",
                                         _ktc("MooncakeConnector", "kv_consumer"))
    xfer = f"xfer-{uuid.uuid4()}"
    bootstrap_url = f"http://127.0.0.1:{bootstrap}"
    async with aiohttp.ClientSession() as session:
        async with session.get(bootstrap_url + "/query") as resp:
            assert await resp.json() == {"0": {"engine_id": "p0"}}
        p_req = _post(session, p_url, {"prompt": PROMPT, "max_tokens": 1, "kv_transfer_params": {
            "do_remote_decode": True, "do_remote_prefill": False, "transfer_id": xfer}})
        d_req = _post(session, d_url, {"prompt": PROMPT, "max_tokens": 3, "kv_transfer_params": {
            "do_remote_decode": False, "do_remote_prefill": True, "transfer_id": xfer,
            "remote_bootstrap_addr": bootstrap_url, "remote_engine_id": "p0"}})
        (p_status, _, pre), (d_status, headers, _) = await asyncio.gather(p_req, d_req)
        assert p_status == d_status == 200
        assert pre["kv_transfer_params"] is None
        assert headers["x-sim-kv-source"] == "remote", headers
        p_metrics = await _metrics(session, p_url)
        d_metrics = await _metrics(session, d_url)
    size = 100 * 2048
    assert _sum(p_metrics, "pd_sim_kv_bytes_sent_total", 'transport="mooncake"') == size
    assert _sum(d_metrics, "pd_sim_kv_bytes_received_total", 'transport="mooncake"') == size


async def test_in_process_pair_can_share_one_engine(sim_factory):
    """Two simulators in one process share the process's TransferEngine and still move bytes."""
    p = await sim_factory("prefill", "nixl", mooncake="on")
    d = await sim_factory("decode", "nixl", mooncake="on")
    async with aiohttp.ClientSession() as session:
        _, _, pre = await _post(session, p, {"prompt": PROMPT, "max_tokens": 1,
                                             "kv_transfer_params": {"do_remote_decode": True}})
        _, headers, _ = await _post(session, d, {"prompt": PROMPT, "max_tokens": 2,
                                                 "kv_transfer_params": pre["kv_transfer_params"]})
        d_metrics = await _metrics(session, d)
    assert headers["x-sim-kv-source"] == "remote"
    assert _sum(d_metrics, "pd_sim_kv_bytes_received_total", 'transport="mooncake"') == 100 * 2048


@pytest.mark.parametrize(("p_mode", "d_mode"), [("on", "off"), ("off", "on")])
@pytest.mark.parametrize("protocol", ["mooncake_v1", "mooncake"])
async def test_mixed_mooncake_and_http_peers(sim_factory, protocol, p_mode, d_mode):
    """One side without Mooncake: the bytes move over HTTP and are counted once."""
    p = await sim_factory("prefill", protocol, mooncake=p_mode)
    d = await sim_factory("decode", protocol, mooncake=d_mode)
    xfer = f"xfer-{uuid.uuid4()}"
    async with aiohttp.ClientSession() as session:
        if protocol == "mooncake":
            (_, _, _), (_, headers, _) = await asyncio.gather(
                _post(session, p, {"prompt": PROMPT, "max_tokens": 1, "kv_transfer_params": {
                    "do_remote_decode": True, "transfer_id": xfer}}),
                _post(session, d, {"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": {
                    "do_remote_prefill": True, "transfer_id": xfer, "remote_bootstrap_addr": p.bootstrap_url,
                    "remote_engine_id": p.config.engine_id}}))
        else:
            _, _, pre = await _post(session, p, {"prompt": PROMPT, "max_tokens": 1,
                                                 "kv_transfer_params": {"do_remote_decode": True}})
            _, headers, _ = await _post(session, d, {"prompt": PROMPT, "max_tokens": 2,
                                                     "kv_transfer_params": pre["kv_transfer_params"]})
        p_metrics, d_metrics = await _metrics(session, p), await _metrics(session, d)
    assert headers["x-sim-kv-source"] == "remote", headers
    assert _sum(p_metrics, "pd_sim_kv_bytes_sent_total") == 100 * 2048
    assert _sum(d_metrics, "pd_sim_kv_bytes_received_total", 'transport="http"') == 100 * 2048
