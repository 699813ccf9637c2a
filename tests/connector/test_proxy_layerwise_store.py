"""The two vllm-ascend connectors beyond MooncakeConnectorV1 through the proxy on the simulator:
MooncakeLayerwiseConnector (decode first, the prefill sent from the proxy's /v1/metaserver and
pushing KV layer by layer into the decode) and the KV pool (MultiConnector of MooncakeConnectorV1
and AscendStoreConnector). The engines run the kv-transfer-config the planner renders for the
sample inventories, so plan, proxy protocol and engine agree; KV bytes are counted on both sides.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openfuyao_pd import kvxfer
from openfuyao_pd.proxy.config import build_config
from openfuyao_pd.proxy.server import start
from openfuyao_pd.sim.config import SimConfig
from openfuyao_pd.sim.server import SimRunner, free_port

UNIT = str(Path(__file__).resolve().parents[1] / "unit")
PROMPT = " ".join(f"word{i}" for i in range(120))
PROMPT2 = " ".join(f"other{i}" for i in range(90))
KV_PER_TOKEN = 1024
MOONCAKE = ["off"] + (["on"] if kvxfer.unavailable_reason() is None else [])
MASTER_BIN = Path(sys.executable).parent / "mooncake_master"  # shipped in the Mooncake wheel
POOLS = ["directory"] + (["mooncake-store"] if kvxfer.unavailable_reason() is None and MASTER_BIN.exists() else [])


@pytest.fixture(scope="module")
def plans() -> dict[str, dict[str, Any]]:
    """The planner's plans of the two sample inventories (the engines run their kv-transfer-configs)."""
    pytest.importorskip("ansible")
    sys.path.insert(0, UNIT)
    try:
        from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import build_plan
        from plan_support import load_inventory
    finally:
        sys.path.remove(UNIT)
    return {name: build_plan(load_inventory(name)) for name in ("ascend-layerwise", "ascend-store")}


def _rendered(plan: dict[str, Any], name: str) -> dict[str, Any]:
    """The instance's kv-transfer-config as its argv carries it, with the side channel on a free port."""
    inst = next(i for i in plan["instances"] if i["name"] == name)
    ktc = json.loads(inst["argv"][inst["argv"].index("--kv-transfer-config") + 1])
    for cfg in [ktc, *((ktc.get("kv_connector_extra_config") or {}).get("connectors") or [])]:
        if "kv_port" in cfg:
            cfg["kv_port"] = str(free_port())
    return ktc


def _series(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _sum(values: dict[str, float], name: str, contains: str = "") -> float:
    return sum(v for k, v in values.items() if k.split("{")[0] == name and contains in k)


@contextlib.asynccontextmanager
async def _cluster(plan: dict[str, Any], names: list[str], mooncake: str, **sim: Any):
    runners: dict[str, SimRunner] = {}
    runner = None
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        for name in names:
            cfg = SimConfig(model="tiny-llama", port=free_port(), kv_transfer_config=_rendered(plan, name),
                            mooncake=mooncake, seed=0, kv_bytes_per_token=KV_PER_TOKEN, **sim)
            runners[name] = await SimRunner(cfg).start()
        proxy_cfg = {
            "address": "127.0.0.1", "port": 0, "protocol": plan["proxy"]["protocol"], "model": "tiny-llama",
            "prefill": [{"name": n, "address": "127.0.0.1", "port": r.port} for n, r in runners.items()
                        if n.startswith("prefill")],
            "decode": [{"name": n, "address": "127.0.0.1", "port": r.port} for n, r in runners.items()
                       if n.startswith("decode")],
            "options": {"health_interval": 0.2, "connect_timeout": 2.0, "prefill_timeout": 10.0,
                        "decode_timeout": 10.0, "routing": "round_robin", "fallback_local_prefill": False},
        }
        runner, proxy, port = await start(build_config(proxy_cfg), "127.0.0.1", 0)
        yield session, f"http://127.0.0.1:{port}", runners, proxy
    finally:
        await session.close()
        if runner is not None:
            await runner.cleanup()
        for r in runners.values():
            await r.stop()


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        return _series(await resp.text())


async def _complete(session: aiohttp.ClientSession, url: str, **extra: Any) -> tuple[int, Any]:
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, **extra}
    async with session.post(url + "/v1/completions", json=body) as resp:
        if body.get("stream"):
            return resp.status, await resp.text()
        return resp.status, await resp.json()


@pytest.mark.parametrize("mooncake", MOONCAKE)
async def test_layerwise_flow_is_decode_first_and_pushes_kv_into_the_decode(plans, mooncake):
    plan = plans["ascend-layerwise"]
    assert plan["proxy"]["protocol"] == "mooncake_layerwise"
    async with _cluster(plan, ["prefill-0", "decode-0"], mooncake) as (session, url, sims, proxy):
        assert proxy.metaserver_url == url + "/v1/metaserver"
        status, out = await _complete(session, url)
        assert status == 200, out
        status, streamed = await _complete(session, url, stream=True, prompt=PROMPT2)
        assert status == 200 and "[DONE]" in streamed
        d = await _metrics(session, sims["decode-0"].url)
        p = await _metrics(session, sims["prefill-0"].url)
        # Direct to the decode, no PD: the same greedy text (the pushed KV is the prompt's).
        async with session.post(sims["decode-0"].url + "/v1/completions",
                                json={"prompt": PROMPT, "max_tokens": 6}) as resp:
            local = await resp.json()
    prompt_tokens = _sum(d, "vllm:prompt_tokens_total")  # both requests' prompts
    assert prompt_tokens > out["usage"]["prompt_tokens"] > 0
    moved = prompt_tokens * KV_PER_TOKEN  # every prompt token's KV, pushed into the decode
    transport = "mooncake" if mooncake == "on" else "http"
    assert _sum(d, "pd_sim_kv_bytes_received_total", transport) == moved
    assert _sum(p, "pd_sim_kv_bytes_sent_total", transport) == moved
    assert _sum(p, "pd_sim_kv_pushes_total", 'reason="ok"') == 2
    assert _sum(d, "pd_sim_kv_loads_total", 'source="remote"') == 2
    assert _sum(d, "vllm:prompt_tokens_by_source_total", "external_kv_transfer") == prompt_tokens - 2  # vLLM recomputes the last token
    assert out["choices"][0]["text"] == local["choices"][0]["text"]


async def test_layerwise_prefill_failure_answers_the_decode_502_and_it_recomputes(plans):
    plan = plans["ascend-layerwise"]
    async with _cluster(plan, ["prefill-0", "decode-0"], "off") as (session, url, sims, _proxy):
        async with session.post(sims["prefill-0"].url + "/sim/faults", json={"faults": ["fail"]}) as resp:
            assert resp.status == 200
        status, out = await _complete(session, url)
        d = await _metrics(session, sims["decode-0"].url)
        pm = await _metrics(session, url)
        # An unknown request id is refused by the metaserver, as vllm-ascend's proxy does (404).
        async with session.post(url + "/v1/metaserver", json={"request_id": "cmpl-nobody-0"}) as resp:
            unknown = resp.status
    assert status == 200, out  # the decode computed the prompt itself
    assert _sum(d, "pd_sim_kv_loads_total", 'reason="metaserver-502"') == 1
    assert _sum(d, "pd_sim_kv_bytes_received_total") == 0
    assert _sum(pm, "pd_proxy_backend_errors_total", 'backend="prefill-0"') >= 1
    assert unknown == 404


@contextlib.contextmanager
def _master(plan: dict[str, Any], tmp_path: Path):
    """The plan's mooncake_master (its flags, on loopback and free ports) and a mooncake.json naming it."""
    port, metrics = free_port(), free_port()
    flags = [a for a in plan["mooncake"]["master"]["args"] if not a.startswith(("--rpc_address", "--metrics_"))]
    log = (tmp_path / "master.log").open("wb")
    proc = subprocess.Popen([str(MASTER_BIN), f"--rpc_port={port}", "--rpc_address=127.0.0.1",
                             "--metrics_host=127.0.0.1", f"--metrics_port={metrics}", *flags],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while b"Master service started" not in (tmp_path / "master.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "master.log").read_text()[-2000:]
            time.sleep(0.05)
        inst = next(i for i in plan["instances"] if i["name"] == "prefill-0")
        doc = json.loads(inst["files"][inst["env"]["MOONCAKE_CONFIG_PATH"]])
        doc.update(master_server_address=f"127.0.0.1:{port}", protocol="tcp")  # no NPU here
        path = tmp_path / "mooncake.json"
        path.write_text(json.dumps(doc))
        yield str(path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.parametrize("pool", POOLS)
async def test_kv_pool_flow_moves_kv_to_the_decode_and_serves_the_other_prefill_from_the_pool(plans, tmp_path, pool):
    plan = plans["ascend-store"]
    assert plan["proxy"]["protocol"] == "mooncake_v1"
    # Two prefills (the inventory's prefill-0 config twice, engine ids apart) and its decode.
    second = json.loads(json.dumps(plan))
    extra = next(i for i in second["instances"] if i["name"] == "prefill-0")
    extra = {**extra, "name": "prefill-1"}
    second["instances"].append(extra)
    with contextlib.ExitStack() as stack:
        if pool == "mooncake-store":
            knobs = {"mooncake_config_path": stack.enter_context(_master(plan, tmp_path))}
        else:
            knobs = {"kv_pool_path": str(tmp_path / "pool")}
        await _pool_flow(second, knobs, pool)


async def _pool_flow(second: dict[str, Any], knobs: dict[str, Any], pool: str) -> None:
    async with _cluster(second, ["prefill-0", "prefill-1", "decode-0"], "off", **knobs) as (session, url, sims, _proxy):
        async with session.get(sims["prefill-1"].url + "/sim/state") as resp:
            assert (await resp.json())["kv_pool"] == pool
        first_status, first = await _complete(session, url)
        second_status, again = await _complete(session, url)  # round robin: the other prefill
        p0 = await _metrics(session, sims["prefill-0"].url)
        p1 = await _metrics(session, sims["prefill-1"].url)
        d = await _metrics(session, sims["decode-0"].url)
    assert first_status == 200 and second_status == 200
    prompt_tokens = first["usage"]["prompt_tokens"]
    block_bytes = 16 * KV_PER_TOKEN
    full_blocks = prompt_tokens // 16
    # P2P: both requests' KV pulled by the decode (MooncakeConnectorV1 inside the MultiConnector).
    assert _sum(d, "pd_sim_kv_bytes_received_total", "http") == 2 * prompt_tokens * KV_PER_TOKEN
    # Pool: the first prefill put its full blocks, the second one found them there.
    assert _sum(p0, "pd_sim_kv_bytes_sent_total", "pool") == full_blocks * block_bytes
    assert _sum(p1, "pd_sim_kv_bytes_received_total", "pool") == full_blocks * block_bytes
    assert _sum(p1, "pd_sim_kv_loads_total", 'source="pool"') == 1
    assert first["choices"][0]["text"] == again["choices"][0]["text"]
