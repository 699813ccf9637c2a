"""The embedded default for real: site.yml on the local inventory brings up a real vLLM (CPU
build) prefill + decode with the tiny model and our proxy; greedy outputs through the PD path
equal a single non-disaggregated vLLM's; the decode loads the prefill's KV; a second run changes
and restarts nothing; bad input fails with one line and the log tail leaving the rest untouched;
bench.yml on it prints the table, writes the plot and compares with a previous run; teardown
leaves nothing running.

The tests of this module run in order and share one deployment (module-scoped fixture): the
bench tests run on it too (a private second deployment of the same 1P1D cost a full site.yml).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "local" / "cluster.ini"
VENV = Path(os.environ.get("PD_E2E_VLLM_VENV", "/opt/openfuyao-pd/vllm"))
SUPERVISORD_CONF = "/etc/openfuyao-pd/supervisord.conf"
LOG_DIR = Path("/var/log/openfuyao-pd")
WORK = ROOT / "tests" / "output" / "e2e"
# Long enough to span several KV blocks (there is KV to hand over), short enough for the
# local max-model-len of 512 with the tiny tokenizer (≈320-360 tokens each).
PROMPTS = [
    "The prefill instance computes the cache of this prompt; the decode instance must load it. " * 7,
    "One two three four five six seven eight nine ten, the proxy routes every request. " * 6,
    "你好,你是谁? 模型 推理 服务 缓存 解码 预填充 the memory layer tensor device token block. " * 12,
    "Water people number sound write would like so these her long make thing see him two has. " * 11,
]
MAX_TOKENS = 24


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    return env


def playbook(name: str, *extra: str, log: str) -> subprocess.CompletedProcess[str]:
    WORK.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY), str(ROOT / "playbooks" / name), *extra],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=3600, check=False,
    )
    (WORK / f"{log}.log").write_text(proc.stdout + proc.stderr)
    return proc


def recap(output: str) -> dict[str, int]:
    m = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert m, "no PLAY RECAP line for localhost"
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


def supervisor_pid(program: str) -> int:
    out = subprocess.run(["supervisorctl", "-c", SUPERVISORD_CONF, "pid", program],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def post(url: str, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def get_text(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def kv_hits(metrics: str) -> float:
    return sum(float(v) for v in re.findall(
        r"(?m)^vllm:external_prefix_cache_hits_total\{.*\}\s+(\S+)$", metrics))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def single_instance_argv(decode_argv: list[str], port: int) -> list[str]:
    """The plan's decode command with the vLLM venv's python, another port and no KV connector."""
    argv, rest = [str(VENV / "bin" / "python")], iter(decode_argv[1:])
    for arg in rest:
        if arg == "--kv-transfer-config":
            next(rest)
        elif arg == "--port":
            next(rest)
            argv += ["--port", str(port)]
        else:
            argv.append(arg)
    assert "--port" in argv and "--max-num-batched-tokens" in argv, argv
    return argv


@dataclasses.dataclass(frozen=True)
class Greedy:
    """One greedy completion: the token ids, their strings, each one's logprob and the top-5 there."""

    ids: list[int]
    tokens: list[str]
    logprobs: list[float]
    top: list[dict[str, float]]


def greedy(url: str, model: str, prompt: str) -> Greedy:
    out = post(url, {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                     "return_token_ids": True, "logprobs": 5})
    choice = out["choices"][0]
    lp = choice["logprobs"]
    return Greedy(list(choice["token_ids"]), list(lp["tokens"]), [float(x) for x in lp["token_logprobs"]],
                  [dict(t) for t in lp["top_logprobs"]])


# The tiny model has random bf16 weights over a 512-token vocabulary: its next-token distribution
# is nearly flat and the top two logits are often equal or one bf16 step apart (measured: top-1
# minus top-2 logprob from 0.0 to 0.34 nats). The decode recomputes the prompt's last tokens in a
# batch of another shape than a single instance does, so such a near-tie can flip and the two
# greedy continuations part there. KV that did not arrive intact gives other distributions from
# the first token on. TIE is four bf16 steps of a logit near 5 (1/32 each): each logprob of the
# decode may differ from the single instance's by that much (the bound every token before a flip is
# held to), so two tokens may trade places where the single instance rates them up to 2 x TIE
# apart; a flip is accepted only there (a full-suite run here parted at a gap of 0.234 nats).
TIE = 0.125


def first_difference(a: Greedy, b: Greedy) -> int | None:
    """The first token where two continuations differ; None where one is a prefix of the other."""
    return next((k for k, (x, y) in enumerate(zip(a.ids, b.ids, strict=False)) if x != y), None)


def greedy_mismatch(pd: Greedy, single: Greedy) -> str | None:
    """Why the disaggregated continuation is not the single instance's, or None when it is."""
    if pd.ids == single.ids:
        return None
    at = first_difference(pd, single)
    if at is None:
        return f"lengths differ: {len(pd.ids)} vs {len(single.ids)} tokens"
    for k in range(at):  # same context so far: the same logprob for the same token
        if abs(pd.logprobs[k] - single.logprobs[k]) > TIE:
            return f"token {k} ({pd.ids[k]}): logprob {pd.logprobs[k]:.3f} vs {single.logprobs[k]:.3f}"
    rated = single.top[at].get(pd.tokens[at])
    if rated is None or single.logprobs[at] - rated > 2 * TIE:
        return (f"token {at}: decode chose {pd.ids[at]} ({pd.tokens[at]!r}) at {pd.logprobs[at]:.3f}, the "
                f"single instance {single.ids[at]} at {single.logprobs[at]:.3f} and rates the decode's "
                f"{'outside its top 5' if rated is None else f'{rated:.3f}'}: not a near-tie")
    return None


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    """The plan the planner computes for the local inventory (what site.yml deploys)."""
    out = WORK / "plan.json"
    proc = playbook("plan.yml", "-e", f"pd_plan_output={out}", log="plan")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def deployed(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    # Start from nothing, so the first run really installs/renders/starts.
    playbook("teardown.yml", log="teardown-before")
    started = time.monotonic()
    first = playbook("site.yml", log="site-1")
    assert first.returncode == 0, first.stdout[-4000:]
    yield {"plan": plan, "first": first, "seconds": time.monotonic() - started}
    playbook("teardown.yml", log="teardown-after")


def test_site_prints_a_completion_and_kv_evidence(deployed: dict[str, Any]) -> None:
    out = deployed["first"].stdout
    assert "completion:" in out
    m = re.search(r"kv_tokens_loaded_by_decode: '?([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, "verify did not report KV loaded by the decode"
    assert "time_to_ready_seconds" in out


def test_second_run_changes_and_restarts_nothing(deployed: dict[str, Any]) -> None:
    names = [f"openfuyao-pd-{i['name']}" for i in deployed["plan"]["instances"]] + ["openfuyao-pd-proxy"]
    before = {n: supervisor_pid(n) for n in names}
    assert all(before.values()), before
    second = playbook("site.yml", log="site-2")
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout)["changed"] == 0, [
        line for line in second.stdout.splitlines() if line.startswith("changed:")]
    assert {n: supervisor_pid(n) for n in names} == before


def test_pd_outputs_equal_a_single_instance_and_kv_moved(deployed: dict[str, Any]) -> None:
    plan = deployed["plan"]
    proxy = plan["proxy"]
    model = plan["model"]
    decode = next(i for i in plan["instances"] if i["role"] == "decode")
    decode_base = decode["health_url"].rsplit("/health", 1)[0]
    url = f"http://{proxy['address']}:{proxy['port']}/v1/completions"
    nonce = f"[{time.time_ns()}] "  # fresh prefixes: nothing is answered from an earlier cache
    prompts = [nonce + p for p in PROMPTS]

    pd_ids = []
    for prompt in prompts:
        hits = kv_hits(get_text(decode_base + "/metrics"))
        pd_ids.append(greedy(url, model["served_name"], prompt))
        assert kv_hits(get_text(decode_base + "/metrics")) > hits, f"decode recomputed: {prompt[:40]}"

    # A single non-disaggregated instance: the decode's own argv from the plan minus the connector,
    # on another port. Greedy ids on a random-weight model are equal only with the same engine
    # flags (--max-num-batched-tokens included: it shapes the CPU kernels' batches).
    port = free_port()
    argv = single_instance_argv(decode["argv"], port)
    log = (WORK / "single.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **decode["env"]})
    try:
        deadline = time.monotonic() + 900
        while True:
            assert proc.poll() is None, f"single instance died, see {WORK / 'single.log'}"
            with contextlib.suppress(OSError):
                get_text(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            assert time.monotonic() < deadline, "single instance did not start"
            time.sleep(2)
        single_ids = [greedy(f"http://127.0.0.1:{port}/v1/completions", model["served_name"], p)
                      for p in prompts]
    finally:
        os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        log.close()
    problems = {k: why for k, (a, b) in enumerate(zip(pd_ids, single_ids, strict=True))
                if (why := greedy_mismatch(a, b))}
    assert not problems, problems
    parted = [first_difference(a, b) for a, b in zip(pd_ids, single_ids, strict=True)]
    print(f"greedy continuations: {parted.count(None)} of {len(parted)} equal; parted at a near-tie "
          f"at tokens {[k for k in parted if k is not None]}")


def _g(ids: list[int], logprobs: list[float], top: list[dict[str, float]]) -> Greedy:
    return Greedy(ids, [f"t{i}" for i in ids], logprobs, top)


def test_greedy_mismatch_accepts_only_a_near_tie() -> None:
    """The comparison above: equal, a flip at a near-tie, and the three ways it must fail."""
    single = _g([1, 2, 3], [-5.0, -5.1, -5.2], [{"t1": -5.0}, {"t2": -5.1, "t9": -5.12}, {"t3": -5.2}])
    assert greedy_mismatch(_g([1, 2, 3], [-5.0, -5.1, -5.2], []), single) is None
    assert greedy_mismatch(_g([1, 9, 4], [-5.0, -5.12, -5.3], []), single) is None  # tie at token 1
    near = _g([1, 2, 3], [-5.0, -5.1, -5.2], [{"t1": -5.0}, {"t2": -5.1, "t9": -5.334}, {"t3": -5.2}])
    assert greedy_mismatch(_g([1, 9, 4], [-5.0, -5.2, -5.3], []), near) is None  # 0.234 apart: within 2 x TIE
    far = _g([1, 2, 3], [-5.0, -5.1, -5.2], [{"t1": -5.0}, {"t2": -5.1, "t9": -5.36}, {"t3": -5.2}])
    assert "not a near-tie" in greedy_mismatch(_g([1, 9, 4], [-5.0, -5.1, -5.3], []), far)
    assert "outside its top 5" in greedy_mismatch(_g([1, 7, 4], [-5.0, -5.1, -5.3], []), single)
    assert "logprob" in greedy_mismatch(_g([1, 9, 4], [-4.5, -5.12, -5.3], []), single)  # drift before


# ------------------------------------------------------------------ no stranded KV, for real
ENGINE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
PROXY_GAUGES = ("pd_proxy_backend_inflight_requests", "pd_proxy_backend_inflight_tokens")
LEAVERS = 30
LEAVER_MAX_TOKENS = 120  # ≈350 prompt tokens + 120 stays under the local max-model-len of 512


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named series summed over its labels; a name the engine does not expose fails loudly."""
    out = {}
    for name in names:
        values = re.findall(rf"(?m)^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)$", text)
        assert values, f"{name} is not in /metrics (vLLM renamed it?)"
        out[name] = sum(float(v) for v in values)
    return out


def counter_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"(?m)^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)$", text))


def leave_early(host: str, port: int, body: dict[str, Any], gone: threading.Event) -> None:
    """Send one completion and hang up: a stream after its first data line, a plain request at `gone`."""
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        if body["stream"]:
            resp = conn.getresponse()
            line = b" "
            while line and not line.startswith(b"data:"):
                line = resp.fp.readline()
        else:
            gone.wait(300)
    finally:
        if conn.sock:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()


def test_clients_leaving_strand_no_kv_on_real_engines(deployed: dict[str, Any]) -> None:
    """30 clients hang up after P answered / mid-stream: both engines end idle, KV back to idle."""
    plan = deployed["plan"]
    proxy = plan["proxy"]
    bases = {i["role"]: i["health_url"].rsplit("/health", 1)[0] for i in plan["instances"]}
    proxy_metrics = f"http://{proxy['address']}:{proxy['port']}/metrics"

    def engines() -> dict[str, dict[str, float]]:
        return {role: metric_sums(get_text(base + "/metrics"), ENGINE_GAUGES) for role, base in bases.items()}

    def generated() -> float:
        return counter_sum(get_text(bases["decode"] + "/metrics"), "vllm:generation_tokens_total")

    def proxy_now() -> dict[str, float]:
        text = get_text(proxy_metrics)
        return {**metric_sums(text, PROXY_GAUGES),
                "pd_proxy_kv_released_total": counter_sum(text, "pd_proxy_kv_released_total")}

    before = {"engines": engines(), "proxy": proxy_now()}
    tokens_before = generated()
    print(f"\nno-stranded-KV before: {before}")
    nonce = f"[{time.time_ns()}] "
    # One prefill at a time: with concurrent prompts vLLM chunks them (max_num_batched_tokens
    # 512) and ExampleConnector then hands D a partial KV file, which kills D's engine.
    busy: dict[str, dict[str, float]] = {}
    clients = []
    for n in range(LEAVERS):
        done = counter_sum(get_text(bases["prefill"] + "/metrics"), "vllm:request_success_total")
        gone = threading.Event()
        body = {"model": plan["model"]["served_name"], "prompt": f"{nonce}{n} {PROMPTS[0]}",
                "max_tokens": LEAVER_MAX_TOKENS, "min_tokens": LEAVER_MAX_TOKENS, "temperature": 0,
                "stream": n % 2 == 0}
        clients.append(threading.Thread(target=leave_early, daemon=True,
                                        args=(proxy["address"], proxy["port"], body, gone)))
        clients[-1].start()
        deadline = time.monotonic() + 120
        while clients[-1].is_alive() and time.monotonic() < deadline:
            text = get_text(bases["prefill"] + "/metrics")
            if counter_sum(text, "vllm:request_success_total") > done:
                break
            time.sleep(0.1)
        # P has answered: while D runs the request, what P still holds for it (nothing, for
        # centralized), then the client hangs up (a stream hangs up on its first data line).
        # Looked for once (a stream may hang up, and D abort, before the first look).
        while not busy and clients[-1].is_alive() and time.monotonic() < deadline:
            now = engines()
            if sum(now["decode"][g] for g in ENGINE_GAUGES[:2]) >= 1:
                busy = busy or now
                break
            time.sleep(0.1)
        gone.set()
    for c in clients:
        c.join(300)
    print(f"no-stranded-KV once P had answered, D running: {busy}")
    assert busy, "never saw D running a client's request after P answered: nothing was measured"

    after: dict[str, Any] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        after = {"engines": engines(), "proxy": proxy_now()}
        idle = all(after["engines"][r][g] == 0 for r in bases for g in ENGINE_GAUGES[:2])
        kv_back = all(after["engines"][r][ENGINE_GAUGES[2]] <= before["engines"][r][ENGINE_GAUGES[2]]
                      for r in bases)
        if idle and kv_back and all(after["proxy"][g] == 0 for g in PROXY_GAUGES):
            break
        time.sleep(1)
    tokens = generated() - tokens_before
    print(f"no-stranded-KV after: {after}; decode generated {tokens:.0f} tokens of the "
          f"{LEAVERS * LEAVER_MAX_TOKENS} the requests asked for")
    # The decodes were cut, not run to the end (min_tokens = max_tokens): a proxy that did not
    # abort D when the client left fails here, however long the wait.
    assert tokens < LEAVERS * LEAVER_MAX_TOKENS
    for role in bases:
        for gauge in ENGINE_GAUGES[:2]:
            assert after["engines"][role][gauge] == 0, f"{role} still has {gauge}: {after}"
        assert after["engines"][role][ENGINE_GAUGES[2]] <= before["engines"][role][ENGINE_GAUGES[2]], after
    for gauge in PROXY_GAUGES:
        assert after["proxy"][gauge] == 0, after
    # centralized: P keeps nothing for a decode, so the proxy released nothing, and P's own
    # figures said so while the decode was still running the requests.
    assert after["proxy"]["pd_proxy_kv_released_total"] == before["proxy"]["pd_proxy_kv_released_total"]
    assert busy["prefill"][ENGINE_GAUGES[2]] <= before["engines"]["prefill"][ENGINE_GAUGES[2]], busy


def _bad_plan(plan: dict[str, Any], name: str, port: int, argv_extra: list[str]) -> Path:
    """The plan plus one more decode instance (a copy of decode-0) on `port`."""
    bad = copy.deepcopy(plan)
    base = next(i for i in bad["instances"] if i["role"] == "decode")
    extra = copy.deepcopy(base)
    old = str(base["http_port"])
    extra.update(name=name, http_port=port, engine_id="9", health_url=f"http://127.0.0.1:{port}/health",
                 ports=[{"start": port, "end": port, "purpose": "http"}])
    extra["argv"] = [str(port) if a == old else a for a in base["argv"]] + argv_extra
    bad["instances"].append(extra)
    bad["hosts"]["localhost"]["instances"].append(name)
    path = WORK / f"plan-{name}.json"
    path.write_text(json.dumps(bad))
    return path


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if "msg:" in line or line.startswith("fatal:")]
    assert lines, output[-2000:]
    assert "Traceback" not in output
    return output


def test_bad_model_path_fails_in_one_line(deployed: dict[str, Any]) -> None:
    bad = copy.deepcopy(deployed["plan"])
    bad["model"].update(builtin=None, source="/nonexistent/model", path="/nonexistent/model")
    path = WORK / "plan-nomodel.json"
    path.write_text(json.dumps(bad))
    proc = playbook("site.yml", "-e", f"pd_plan_file={path}", "--skip-tags", "preflight", log="bad-model")
    assert proc.returncode != 0
    assert "model path /nonexistent/model does not exist" in _one_line_error(proc.stdout)


def test_port_in_use_fails_naming_it_others_untouched(deployed: dict[str, Any]) -> None:
    names = [f"openfuyao-pd-{i['name']}" for i in deployed["plan"]["instances"]]
    before = {n: supervisor_pid(n) for n in names}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = _bad_plan(deployed["plan"], "decode-9", port, [])
        proc = playbook("site.yml", "-e", f"pd_plan_file={path}", "--skip-tags", "preflight", log="bad-port")
    assert proc.returncode != 0
    assert f"port {port} (http) of decode-9 on 127.0.0.1 is already in use" in _one_line_error(proc.stdout)
    assert {n: supervisor_pid(n) for n in names} == before


def test_instance_dying_at_start_reports_its_log(deployed: dict[str, Any]) -> None:
    names = [f"openfuyao-pd-{i['name']}" for i in deployed["plan"]["instances"]]
    before = {n: supervisor_pid(n) for n in names}
    path = _bad_plan(deployed["plan"], "decode-8", free_port(), ["--no-such-flag"])
    # A crash-loop limit of one start for this run: the broken instance is FATAL after its first
    # exit instead of after five starts of vLLM (about a minute). Only the start guard reads it,
    # and it is no input of the running instances (the check of their pids below holds that);
    # the run back to the plan renders the default again.
    proc = playbook("site.yml", "-e", f"pd_plan_file={path}", "-e", "vllm_pd_restart_burst=1",
                    "--skip-tags", "preflight", log="bad-dies")
    assert proc.returncode != 0
    out = _one_line_error(proc.stdout)
    assert "decode-8 exited before serving" in out
    assert "no-such-flag" in out  # the log tail names the cause
    assert {n: supervisor_pid(n) for n in names} == before
    # Back to the plan: the extra instance is pruned, the others still not restarted.
    again = playbook("site.yml", log="site-3")
    assert again.returncode == 0, again.stdout[-3000:]
    assert not (Path("/etc/openfuyao-pd/supervisor.d") / "openfuyao-pd-decode-8.conf").exists()
    assert {n: supervisor_pid(n) for n in names} == before


def test_bench_prints_the_table_writes_the_plot_and_compares(deployed: dict[str, Any]) -> None:
    """bench.yml: `vllm bench serve` through the proxy with the seed's defaults shrunk to the tiny
    model's --max-model-len, the result fetched to the controller, summarised and plotted."""
    out_dir = WORK / "bench-results"
    shutil.rmtree(out_dir, ignore_errors=True)
    proc = playbook("bench.yml", "-e", f"bench_output_dir={out_dir}", log="bench-first")
    assert proc.returncode == 0, proc.stdout[-3000:]
    # the seed's 4096 + 100 do not fit the tiny model's 512 tokens: shrunk, and said so
    assert "do not fit --max-model-len" in proc.stdout
    results = sorted(out_dir.glob("bench-*.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert result["completed"] == 10 and result["failed"] == 0
    assert result["num_prompts"] == 10 and result["request_rate"] == 1.0
    for metric in ("ttft", "tpot", "itl"):
        for p in (50, 90, 99):
            assert result[f"p{p}_{metric}_ms"] > 0
    assert result["request_goodput"] is not None
    for label in ("TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p90 (ms)", "ITL p99 (ms)",
                  "request throughput (req/s)", "output throughput (tok/s)", "goodput (req/s)"):
        assert label in proc.stdout
    png = results[0].with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    proc = playbook("bench.yml", "-e", f"bench_output_dir={out_dir}", "-e", f"bench_previous={results[0]}",
                    "-e", "bench_num_prompts=5", log="bench-second")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert len(sorted(out_dir.glob("bench-*.json"))) == 2
    header = next(line for line in proc.stdout.splitlines() if line.strip().startswith("metric"))
    assert "previous" in header and "change" in header
    row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("successful requests"))
    assert row.split()[2:4] == ["5", "10"]


def test_bench_without_a_proxy_says_so(deployed: dict[str, Any]) -> None:
    proc = playbook("bench.yml", "-e", "pd_proxy_port=1", log="bench-no-proxy")
    assert proc.returncode != 0
    assert "proxy at http://127.0.0.1:1 does not answer /health" in proc.stdout


def test_teardown_leaves_nothing_running(deployed: dict[str, Any]) -> None:
    proc = playbook("teardown.yml", log="teardown")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert subprocess.run(["supervisorctl", "-c", SUPERVISORD_CONF, "pid"], capture_output=True,
                          check=False).returncode != 0 or not Path(SUPERVISORD_CONF).exists()
    plan = deployed["plan"]
    # Nothing listens any more (SO_REUSEADDR: closed connections in TIME_WAIT do not count).
    for address, port in [(i["address"], i["http_port"]) for i in plan["instances"]] + [
            (plan["proxy"]["address"], plan["proxy"]["port"])]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
    # And no process of ours is left (launch scripts, vLLM on our model, the proxy).
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if plan["model"]["path"] in cmd or "/etc/openfuyao-pd/" in cmd:
                left.append(cmd[:120])
    assert not left, left
    again = playbook("teardown.yml", log="teardown-2")
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0
    assert shutil.which("supervisorctl")
