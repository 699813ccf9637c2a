#!/usr/bin/env python3
"""PD proxy benchmark: overhead vs direct and vs peer proxies, and goodput per routing policy.

Everything runs on this host over loopback, in separate processes: the overhead part in front of
zero-delay mock engines (bench/mock_engine.py; `--engine sim` for the simulator), 1P1D and 2P2D,
streamed and not; the goodput part on the engine simulator (`openfuyao_pd.sim`). Peers come from
a separate virtualenv (PEERS_VENV, see bench/README.md):
  - vllm-router (`vllm-router --vllm-pd-disaggregation --kv-connector nixl`)
  - the vLLM v1 proxy shipped in the Mooncake wheel (`mooncake/vllm_v1_proxy_server.py`)
Missing peers are reported as skipped, never guessed.

    python bench/proxy_bench.py all --peers-venv /tmp/peers --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CONNECTOR = ROOT / "files" / "connector"
ENV = {**os.environ, "PYTHONPATH": str(CONNECTOR)}
WORDS = [f"w{i:02d}" for i in range(100)]  # 3 chars + space = 4 chars = 1 sim token = 1 estimated token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


class Procs:
    """Child processes, stopped (by pid) when the block ends."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              stop_signal: int = signal.SIGTERM) -> None:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
        self.procs.append((subprocess.Popen(argv, env=env or ENV, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True), stop_signal))

    def stop(self) -> None:
        for proc, sig in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextlib.contextmanager
def processes() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop()


def sim_argv(role: str, port: int, flags: list[str]) -> list[str]:
    ktc = {"kv_connector": "NixlConnector", "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
           "engine_id": f"{role}-{port}"}
    return [sys.executable, "-m", "openfuyao_pd.sim", "serve", "tiny-llama", "--host", "127.0.0.1",
            "--port", str(port), "--kv-transfer-config", json.dumps(ktc), "--seed", "0", "--sim-mooncake", "off",
            "--log-level", "error", *flags]


# ------------------------------------------------------------------------------------ client
@dataclass
class Sample:
    ok: bool
    latency: float
    ttft: float | None = None
    tokens: int = 0
    error: str | None = None


def prompt(rng: random.Random, n_tokens: int, prefix: str = "") -> str:
    return prefix + " ".join(rng.choice(WORDS) for _ in range(n_tokens))


async def one_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            if not body.get("stream"):
                data = await resp.read()
                ok = resp.status == 200 and b'"choices"' in data
                return Sample(ok, time.perf_counter() - start,
                              error=None if ok else f"HTTP {resp.status}: {data[:160].decode(errors='replace')}")
            ttft = None
            tokens = 0
            done = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    done = True
                    break
                if b'"error"' in line:
                    break
                if b'"text": "' in line or b'"text":"' in line:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    tokens += 1
            ok = resp.status == 200 and done
            return Sample(ok, time.perf_counter() - start, ttft, tokens, None if ok else f"HTTP {resp.status}")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Sample(False, time.perf_counter() - start, error=type(exc).__name__)


async def closed_loop(url: str, n: int, concurrency: int, prompt_tokens: int, max_tokens: int, stream: bool,
                      seed: int, warmup: int = 20, before_start: Any = None) -> tuple[list[Sample], float]:
    rng = random.Random(seed)
    bodies = [{"model": "tiny-llama", "prompt": prompt(rng, prompt_tokens), "max_tokens": max_tokens,
               "stream": stream, "ignore_eos": True} for _ in range(n)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for body in bodies[: min(warmup, n)]:  # warm-up: connections, first-request paths
            await one_request(session, url, {**body, "prompt": "warm " + body["prompt"]})
        queue = iter(bodies)
        samples: list[Sample] = []

        async def worker() -> None:
            for body in queue:
                samples.append(await one_request(session, url, body))

        if before_start is not None:
            await before_start()
        START[0] = time.time()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        START[1] = time.time()
        return samples, time.perf_counter() - start


async def client_procs_loop(url: str, n: int, concurrency: int, prompt_tokens: int, max_tokens: int, stream: bool,
                            seed: int, procs: int, warmup: int = 20) -> tuple[list[Sample], float]:
    """`closed_loop` split over `procs` client processes, so that one Python client's event loop is not
    what limits (and times) every target. Each process warms up, says `ready`, and starts on `go` once
    all are ready; the wall time runs from the first start to the last end (one host clock)."""
    share, extra = divmod(n, procs)
    children = []
    for i in range(procs):
        spec = {"url": url, "n": share + (1 if i < extra else 0), "concurrency": max(1, concurrency // procs),
                "prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "stream": stream,
                "seed": seed * 1000 + i, "warmup": warmup}
        children.append(await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "client", "--spec", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
    for child in children:
        assert child.stdout is not None
        if (await child.stdout.readline()).strip() != b"ready":
            raise RuntimeError(f"a bench client process for {url} exited before it was ready")
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        await child.stdin.drain()
    samples: list[Sample] = []
    starts, ends = [], []
    for child in children:
        out, _ = await child.communicate()
        got = json.loads(out)
        starts.append(got["start"])
        ends.append(got["end"])
        samples.extend(Sample(**s) for s in got["samples"])
    return samples, max(ends) - min(starts)


async def client_main(spec: dict[str, Any]) -> None:
    """One client process of `client_procs_loop`: warm up, `ready`, wait for `go`, run, print samples."""
    async def wait_go() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    samples, _ = await closed_loop(spec["url"], spec["n"], spec["concurrency"], spec["prompt_tokens"],
                                   spec["max_tokens"], spec["stream"], spec["seed"], spec["warmup"],
                                   before_start=wait_go)
    print(json.dumps({"start": START[0], "end": START[1], "samples": [s.__dict__ for s in samples]}))


START = [0.0, 0.0]  # the client process's wall-clock window, set by closed_loop


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


# ------------------------------------------------------------------------------------ overhead
@dataclass
class Target:
    name: str
    url: str
    note: str
    ready: str = "/health"
    kind: str = "ours"


def our_proxy_config(port: int, prefill: list[int], decode: list[int], options: dict[str, Any]) -> str:
    cfg = {"address": "127.0.0.1", "port": port, "protocol": "nixl", "model": "tiny-llama",
           "prefill": [{"name": f"prefill-{i}", "address": "127.0.0.1", "port": p} for i, p in enumerate(prefill)],
           "decode": [{"name": f"decode-{i}", "address": "127.0.0.1", "port": p} for i, p in enumerate(decode)],
           "options": options}
    fd, path = tempfile.mkstemp(suffix=".json", prefix="pd-proxy-bench-")
    with os.fdopen(fd, "w") as handle:
        json.dump(cfg, handle)
    return path


def engine_argv(engine: str, role: str, port: int, procs: int = 1) -> list[str]:
    if engine == "mock":
        return [sys.executable, str(ROOT / "bench" / "mock_engine.py"), "--port", str(port), "--procs", str(procs)]
    zero = ["--sim-kv-bytes-per-token", "16", "--sim-max-seqs", "1024", "--sim-kv-capacity-blocks", "200000"]
    return sim_argv(role, port, zero)


def peer_targets(procs: Procs, peers: Path | None, topo: str, p_ports: list[int], d_ports: list[int], logs: Path,
                 skipped: list[str]) -> list[Target]:
    """vllm-router and the Mooncake wheel's proxy in front of the same engines (skipped when not installed)."""
    out: list[Target] = []
    router = peers / "bin" / "vllm-router" if peers else None
    if router and router.exists():
        port = free_port()
        argv = [str(router), "--vllm-pd-disaggregation"]
        for p in p_ports:
            argv += ["--prefill", f"http://127.0.0.1:{p}"]
        for d in d_ports:
            argv += ["--decode", f"http://127.0.0.1:{d}"]
        procs.start([*argv, "--host", "127.0.0.1", "--port", str(port), "--kv-connector", "nixl", "--policy",
                     "round_robin", "--prometheus-port", str(free_port()), "--log-level", "warning"],
                    env=dict(os.environ), log=logs / f"vllm-router-{topo}.log")
        out.append(Target(f"vllm-router (Rust), {topo}", f"http://127.0.0.1:{port}", "round_robin, nixl",
                          kind="vllm-router"))
    else:
        skipped.append(f"vllm-router ({topo}): not installed in the peers venv")
    found = sorted((peers / "lib").glob("python3*/site-packages/mooncake/vllm_v1_proxy_server.py")) if peers else []
    if found:
        port = free_port()
        procs.start([str(peers / "bin" / "python"), str(found[0]), "--host", "127.0.0.1", "--port", str(port),
                     "--prefiller-hosts", *["127.0.0.1"] * len(p_ports), "--prefiller-ports", *map(str, p_ports),
                     "--decoder-hosts", *["127.0.0.1"] * len(d_ports), "--decoder-ports", *map(str, d_ports)],
                    env=dict(os.environ), log=logs / f"mooncake-proxy-{topo}.log")
        out.append(Target(f"Mooncake wheel vllm_v1_proxy_server.py, {topo}", f"http://127.0.0.1:{port}",
                          "FastAPI + httpx", "/healthcheck", kind="mooncake"))
    else:
        skipped.append(f"Mooncake wheel proxy ({topo}): mooncake-transfer-engine-non-cuda not in the peers venv")
    return out


def our_proxy(procs: Procs, p_ports: list[int], d_ports: list[int], options: dict[str, Any], log: Path,
              py_spy: str | None, connector: Path = CONNECTOR) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "openfuyao_pd.proxy", "--config", our_proxy_config(port, p_ports, d_ports, options),
            "--log-level", "WARNING"]
    if py_spy:  # sample the proxy (master and workers) for the whole run (self time per function: bench/README.md)
        argv = [py_spy, "record", "--subprocesses", "--nonblocking", "--rate", "200", "--format", "raw", "-o",
                str(log.with_suffix(".pyspy.txt")), "--", *argv]
    # py-spy writes its profile on SIGINT (and forwards it to the proxy, which stops on it too).
    procs.start(argv, env={**os.environ, "PYTHONPATH": str(connector)}, log=log,
                stop_signal=signal.SIGINT if py_spy else signal.SIGTERM)
    return f"http://127.0.0.1:{port}"


def summarise(target: Target, stream: bool, topo: str, samples: list[Sample], wall: float) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    lat = [s.latency for s in ok]
    row = {"target": target.name, "kind": target.kind, "topology": topo, "note": target.note, "stream": stream,
           "requests": len(samples), "errors": len(samples) - len(ok),
           "first_error": next((s.error for s in samples if not s.ok), None),
           "rps": round(len(ok) / wall, 1), "p50_ms": round(pct(lat, 50) * 1000, 2),
           "p99_ms": round(pct(lat, 99) * 1000, 2)}
    if stream:
        row["ttft_p50_ms"] = round(pct([s.ttft for s in ok if s.ttft], 50) * 1000, 2)
    return row


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against each peer in the same topology and mode: throughput ratio and p50/p99 ratios."""
    out = []
    for ours in (r for r in rows if r["kind"] in ("ours", "ours-1w")):
        for peer in rows:
            if peer["kind"] in ("vllm-router", "mooncake", "direct", "baseline") and (peer["topology"], peer["stream"]) == (
                    ours["topology"], ours["stream"]) and peer["rps"] and peer["p50_ms"]:
                out.append({"topology": ours["topology"], "stream": ours["stream"], "ours": ours["target"],
                            "peer": peer["kind"],
                            "rps_ratio": round(ours["rps"] / peer["rps"], 2),
                            "p50_ratio": round(ours["p50_ms"] / peer["p50_ms"], 2),
                            "p99_ratio": round(ours["p99_ms"] / peer["p99_ms"], 2)})
    return out


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    peers = Path(args.peers_venv) if args.peers_venv else None
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    topologies = [t.strip().lower() for t in args.topologies.split(",") if t.strip()]
    results: dict[str, Any] = {"settings": {k: getattr(args, k) for k in ("requests", "concurrency", "prompt_tokens",
                                                                          "max_tokens", "rounds", "engine",
                                                                          "proxy_workers", "client_procs", "engine_procs",
                                                                          "baseline_label")},
                               "rows": [], "skipped": [], "topologies": topologies}
    with processes() as procs:
        targets: dict[str, list[Target]] = {}
        engines: list[str] = []
        for topo in topologies:
            n_p, n_d = int(topo[0]), int(topo[2])
            p_ports = [free_port() for _ in range(n_p)]
            d_ports = [free_port() for _ in range(n_d)]
            for role, ports in (("prefill", p_ports), ("decode", d_ports)):
                for i, port in enumerate(ports):
                    procs.start(engine_argv(args.engine, role, port, args.engine_procs), log=logs / f"{args.engine}-{topo}-{role}-{i}.log")
                    engines.append(f"http://127.0.0.1:{port}/health")
            row: list[Target] = []
            if n_d == 1:
                row.append(Target(f"direct (client → decode, no PD), {topo}", f"http://127.0.0.1:{d_ports[0]}",
                                  "one hop, baseline", "/v1/models", kind="direct"))
            ours_opts = {"workers": args.proxy_workers} if args.proxy_workers > 1 else {}
            url = our_proxy(procs, p_ports, d_ports, ours_opts, logs / f"pd-proxy-{topo}.log", args.py_spy)
            workers = f", {args.proxy_workers} workers" if args.proxy_workers > 1 else ""
            row.append(Target(f"pd-proxy (ours{workers}), {topo}", url, "nixl, least_load" + workers, kind="ours"))
            if args.baseline:  # an earlier revision of our proxy, same options: an A/B in one run
                url = our_proxy(procs, p_ports, d_ports, ours_opts, logs / f"pd-proxy-baseline-{topo}.log", None,
                                Path(args.baseline) / "files" / "connector")
                row.append(Target(f"pd-proxy (baseline {args.baseline_label or args.baseline}{workers}), {topo}", url,
                                  "nixl, least_load" + workers, kind="baseline"))
            if args.proxy_workers > 1:  # the one-process proxy too, in the same run
                url = our_proxy(procs, p_ports, d_ports, {}, logs / f"pd-proxy-1w-{topo}.log", None)
                row.append(Target(f"pd-proxy (ours, 1 worker), {topo}", url, "nixl, least_load", kind="ours-1w"))
            if n_d == 1 and args.local_route:
                url = our_proxy(procs, p_ports, d_ports, {"local_prefill_max_tokens": 1000000},
                                logs / f"pd-proxy-local-{topo}.log", None)
                row.append(Target(f"pd-proxy (ours), local route, {topo}", url,
                                  "every request straight to D: the proxy's own cost, 1 hop", kind="ours-local"))
            row.extend(peer_targets(procs, peers, topo, p_ports, d_ports, logs, results["skipped"]))
            targets[topo] = row
        for url in engines:
            await wait_http(url)
        for target in (t for row in targets.values() for t in row):
            await wait_http(target.url + target.ready)
        results["loadavg_start"] = os.getloadavg()
        per_round = max(1, args.requests // args.rounds)
        for topo, row in targets.items():
            for stream in (False, True):
                collected: dict[str, tuple[list[Sample], float]] = {t.name: ([], 0.0) for t in row}
                # Interleaved rounds, the order reversed every other round, so that load from anything
                # else on the host hits every target alike.
                for round_no in range(args.rounds):
                    for target in (row if round_no % 2 == 0 else row[::-1]):
                        if args.client_procs > 1:
                            samples, wall = await client_procs_loop(
                                target.url, per_round, args.concurrency, args.prompt_tokens, args.max_tokens, stream,
                                seed=round_no, procs=args.client_procs, warmup=4)
                        else:
                            samples, wall = await closed_loop(
                                target.url, per_round, args.concurrency, args.prompt_tokens, args.max_tokens, stream,
                                seed=round_no, warmup=20 if round_no == 0 else 0)
                        old, old_wall = collected[target.name]
                        collected[target.name] = (old + samples, old_wall + wall)
                direct = None
                for target in row:
                    result = summarise(target, stream, topo, *collected[target.name])
                    if target.kind == "direct":
                        direct = result
                    if direct:
                        result["added_p50_ms"] = round(result["p50_ms"] - direct["p50_ms"], 2)
                        result["added_p99_ms"] = round(result["p99_ms"] - direct["p99_ms"], 2)
                    results["rows"].append(result)
                    print(json.dumps(result), flush=True)
        results["loadavg_end"] = os.getloadavg()
    results["ratios"] = ratios(results["rows"])
    for r in results["ratios"]:
        print(json.dumps(r), flush=True)
    return results


# ------------------------------------------------------------------------------------ goodput
POLICIES: dict[str, dict[str, Any]] = {
    "round_robin": {"routing": "round_robin"},
    "least_load": {"routing": "least_load"},
    "prefix_affinity": {"routing": "prefix_affinity"},
    "least_load + load awareness": {"routing": "least_load", "local_prefill_max_tokens": 128,
                                    "prefill_queue_threshold": 6, "decode_busy_threshold": 48},
    "prefix_affinity + load awareness": {"routing": "prefix_affinity", "local_prefill_max_tokens": 128,
                                         "prefill_queue_threshold": 6, "decode_busy_threshold": 48},
}


def mixed_workload(n: int, seed: int) -> list[dict[str, Any]]:
    """60 % chat turns on 8 shared 1,000-token system prompts, 30 % short unique, 10 % long unique."""
    rng = random.Random(seed)
    systems = [prompt(random.Random(1000 + i), 1000) + " " for i in range(8)]
    bodies = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.6:
            text = prompt(rng, rng.randint(20, 80), rng.choice(systems))
        elif roll < 0.9:
            text = prompt(rng, rng.randint(40, 120))
        else:
            text = prompt(rng, rng.randint(2500, 3500))
        bodies.append({"model": "tiny-llama", "prompt": text, "max_tokens": rng.randint(16, 48), "stream": True,
                       "ignore_eos": True})
    return bodies


async def open_loop(url: str, bodies: list[dict[str, Any]], rate: float, seed: int) -> tuple[list[Sample], float]:
    rng = random.Random(seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = []
        start = time.perf_counter()
        for body in bodies:
            tasks.append(asyncio.create_task(one_request(session, url, body)))
            await asyncio.sleep(rng.expovariate(rate))
        samples = await asyncio.gather(*tasks)
        return list(samples), time.perf_counter() - start


async def goodput_once(args: argparse.Namespace, name: str, options: dict[str, Any], bodies: list[dict[str, Any]],
                       timing: list[str], seqs: dict[str, list[str]], logs: Path) -> tuple[list[Sample], float, int]:
    """One policy on fresh engines (cold caches): samples, wall time, local-prefill count."""
    with processes() as procs:
        ports = [free_port() for _ in range(4)]
        for i, port in enumerate(ports):
            role = "prefill" if i < 2 else "decode"
            procs.start(sim_argv(role, port, timing + seqs[role]))
        for port in ports:
            await wait_http(f"http://127.0.0.1:{port}/health")
        proxy_port = free_port()
        procs.start([sys.executable, "-m", "openfuyao_pd.proxy", "--config",
                     our_proxy_config(proxy_port, ports[:2], ports[2:], options), "--log-level", "WARNING"],
                    log=logs / f"goodput-{name.replace(' ', '_')}.log")
        url = f"http://127.0.0.1:{proxy_port}"
        await wait_http(url + "/health")
        samples, wall = await open_loop(url, bodies, args.rate, seed=3)
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
            metrics = await resp.text()
    local = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith('pd_proxy_route_decisions_total{decision="local"'))
    return samples, wall, int(local)


async def goodput(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timing = ["--sim-prefill-ms-per-token", str(args.prefill_ms_per_token), "--sim-decode-step-ms",
              str(args.decode_step_ms), "--sim-decode-step-growth", "0.02",
              "--sim-kv-bytes-per-token", "16", "--sim-kv-capacity-blocks", "100000"]
    seqs = {"prefill": ["--sim-max-seqs", str(args.prefill_max_seqs)], "decode": ["--sim-max-seqs", "64"]}
    results: dict[str, Any] = {"loadavg_start": os.getloadavg(),
                               "settings": {"requests": args.goodput_requests, "rate": args.rate,
                                            "ttft_slo_ms": args.ttft_slo_ms, "tpot_slo_ms": args.tpot_slo_ms,
                                            "prefill_ms_per_token": args.prefill_ms_per_token,
                                            "decode_step_ms": args.decode_step_ms, "topology": "2P2D",
                                            "prefill_max_seqs": args.prefill_max_seqs, "repeats": args.repeats},
                               "rows": []}
    bodies = mixed_workload(args.goodput_requests, seed=7)
    runs: dict[str, list[tuple[list[Sample], float, int]]] = {name: [] for name in POLICIES}
    for rep in range(args.repeats):
        # Alternate the order so that background load on the host does not favour one policy.
        order = list(POLICIES) if rep % 2 == 0 else list(reversed(POLICIES))
        for name in order:
            runs[name].append(await goodput_once(args, name, POLICIES[name], bodies, timing, seqs, logs))
    for name in POLICIES:
        samples = [s for run in runs[name] for s in run[0]]
        wall = sum(run[1] for run in runs[name])
        local = sum(run[2] for run in runs[name])
        ok = [s for s in samples if s.ok and s.ttft is not None]
        tpots = {id(s): (s.latency - s.ttft) / max(1, s.tokens - 1) for s in ok}  # type: ignore[operator]
        good = [s for s in ok if s.ttft * 1000 <= args.ttft_slo_ms and tpots[id(s)] * 1000 <= args.tpot_slo_ms]
        row = {"policy": name, "requests": len(samples), "errors": len(samples) - len(ok),
               "slo_met": len(good), "goodput_rps": round(len(good) / wall, 2),
               "slo_attainment": round(len(good) / len(samples), 3),
               "ttft_p50_ms": round(pct([s.ttft for s in ok], 50) * 1000, 1),  # type: ignore[misc]
               "ttft_p99_ms": round(pct([s.ttft for s in ok], 99) * 1000, 1),  # type: ignore[misc]
               "tpot_p50_ms": round(pct(list(tpots.values()), 50) * 1000, 1),
               "tpot_p99_ms": round(pct(list(tpots.values()), 99) * 1000, 1),
               "local_prefills": local}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    results["loadavg_end"] = os.getloadavg()
    return results


# ------------------------------------------------------------------------------------ report
def markdown(over: dict[str, Any] | None, good: dict[str, Any] | None) -> str:
    out: list[str] = []
    if over:
        s = over["settings"]
        engine = ("zero-delay mock engines (bench/mock_engine.py" + (f", {s['engine_procs']} processes each"
                                                                     if s.get("engine_procs", 1) > 1 else "") + ")"
                  if s["engine"] == "mock" else "zero-delay simulator")
        out.append(f"### Proxy overhead ({s['requests']} requests per target and mode in {s['rounds']} interleaved "
                   f"rounds, {s['concurrency']} concurrent, {s['prompt_tokens']}-token prompts, {s['max_tokens']} "
                   f"output tokens, {engine}, {s.get('client_procs', 1)} client process(es))\n")
        out.append("| target | mode | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in over["rows"]:
            out.append(f"| {r['target']} | {'stream' if r['stream'] else 'non-stream'} | {r['rps']} | {r['p50_ms']} | "
                       f"{r['p99_ms']} | {r.get('added_p50_ms', '')} | {r.get('added_p99_ms', '')} | {r['errors']} |")
        if over.get("ratios"):
            out.append("\n**Ours / peer, same run** (throughput: higher is better; latency: lower is better)\n")
            out.append("| ours | topology | mode | peer | req/s ratio | p50 ratio | p99 ratio |")
            out.append("|---|---|---|---|---|---|---|")
            for r in over["ratios"]:
                ours = r.get("ours", "pd-proxy (ours)").rsplit(",", 1)[0]
                out.append(f"| {ours} | {r['topology']} | {'stream' if r['stream'] else 'non-stream'} | {r['peer']} | "
                           f"{r['rps_ratio']}x | {r['p50_ratio']}x | {r['p99_ratio']}x |")
        out.append(f"\nHost load average (1 min) at start / end: {over['loadavg_start'][0]:.1f} / "
                   f"{over['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs.")
        for skipped in over.get("skipped", []):
            out.append(f"\nSkipped: {skipped}")
        out.append("")
    if good:
        s = good["settings"]
        out.append(f"### Goodput on a simulated 2P2D, mixed workload ({s['repeats']} runs x {s['requests']} streamed requests, "
                   f"Poisson {s['rate']} req/s; SLO TTFT ≤ {s['ttft_slo_ms']} ms and TPOT ≤ {s['tpot_slo_ms']} ms)\n")
        out.append("| policy | goodput req/s | SLO met | TTFT p50 / p99 ms | TPOT p50 / p99 ms | local prefills | errors |")
        out.append("|---|---|---|---|---|---|---|")
        for r in good["rows"]:
            out.append(f"| {r['policy']} | {r['goodput_rps']} | {r['slo_met']}/{r['requests']} "
                       f"({r['slo_attainment']:.0%}) | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
                       f"{r['tpot_p50_ms']} / {r['tpot_p99_ms']} | {r['local_prefills']} | {r['errors']} |")
        out.append(f"\nHost load average (1 min) at start / end: {good['loadavg_start'][0]:.1f} / "
                   f"{good['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs.")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("overhead", "goodput", "all", "client"))
    parser.add_argument("--spec", help=argparse.SUPPRESS)  # `client`: one load-generator process's job (JSON)
    parser.add_argument("--client-procs", type=int, default=1,
                        help="overhead: load-generator processes sharing --concurrency (1: one asyncio client)")
    parser.add_argument("--peers-venv", default=os.environ.get("PEERS_VENV"),
                        help="virtualenv holding vllm-router and mooncake-transfer-engine-non-cuda (+ httpx)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the targets")
    parser.add_argument("--engine", choices=("mock", "sim"), default="mock",
                        help="overhead: bench/mock_engine.py (the proxy is the limit) or the simulator")
    parser.add_argument("--baseline", help="overhead: a tree of an earlier revision (e.g. `git worktree add DIR REV`); "
                                           "its proxy runs beside ours with the same options, and the ratios include it")
    parser.add_argument("--baseline-label", help="overhead: the baseline's name in the tables (default: its folder)")
    parser.add_argument("--engine-procs", type=int, default=1,
                        help="overhead, mock engines: processes per engine (SO_REUSEPORT), so that a single "
                             "engine process does not bound the targets on a host with cores to spare")
    parser.add_argument("--topologies", default="1p1d,2p2d", help="overhead: comma-separated, e.g. 1p1d,2p2d")
    parser.add_argument("--no-local-route", dest="local_route", action="store_false",
                        help="overhead: leave out our proxy's local-route row")
    parser.add_argument("--py-spy", help="overhead: path to py-spy; our P->D proxies run under `py-spy record`")
    parser.add_argument("--proxy-workers", type=int, default=1,
                        help="overhead: our proxy's `workers` option (worker processes on the port)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--goodput-requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per policy, in alternating order")
    parser.add_argument("--ttft-slo-ms", type=float, default=300.0)
    parser.add_argument("--tpot-slo-ms", type=float, default=40.0)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.1)
    parser.add_argument("--decode-step-ms", type=float, default=15.0)
    parser.add_argument("--prefill-max-seqs", type=int, default=2,
                        help="concurrent sequences per simulated prefill engine (a small value makes P queue)")
    args = parser.parse_args()
    if args.what == "client":
        asyncio.run(client_main(json.loads(args.spec)))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    over = good = None
    if args.what in ("overhead", "all"):
        over = asyncio.run(overhead(args))
        (Path(args.out) / "overhead.json").write_text(json.dumps(over, indent=2) + "\n")
    if args.what in ("goodput", "all"):
        good = asyncio.run(goodput(args))
        (Path(args.out) / "goodput.json").write_text(json.dumps(good, indent=2) + "\n")
    # A run of one part keeps the other part's last results in results.md.
    for name in ("overhead", "goodput"):
        saved = Path(args.out) / f"{name}.json"
        if (over if name == "overhead" else good) is None and saved.exists():
            if name == "overhead":
                over = json.loads(saved.read_text())
            else:
                good = json.loads(saved.read_text())
    report = markdown(over, good)
    (Path(args.out) / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
