"""The embedded default for real: site.yml on the local inventory brings up a real vLLM (CPU
build) prefill + decode with the tiny model and our proxy; greedy outputs through the PD path
equal a single non-disaggregated vLLM's; the decode loads the prefill's KV; a second run changes
and restarts nothing; bad input fails with one line and the log tail leaving the rest untouched;
teardown leaves nothing running.

The tests of this module run in order and share one deployment (module-scoped fixture).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import socket
import subprocess
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


def greedy(url: str, model: str, prompt: str) -> list[int]:
    out = post(url, {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                     "return_token_ids": True})
    return list(out["choices"][0]["token_ids"])


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

    # A single non-disaggregated instance of the same model, same flags minus the connector.
    port = free_port()
    argv = [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", model["path"], "--served-model-name", model["served_name"],
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
            "--enforce-eager", "--dtype", "bfloat16", "--seed", "1024"]
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
    assert pd_ids == single_ids


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
    proc = playbook("site.yml", "-e", f"pd_plan_file={path}", "--skip-tags", "preflight", log="bad-dies")
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
