"""The day-2 playbooks' logic (plugins/module_utils/pd_day2.py) and its filters day2_batches, day2_diff,
day2_status: batches, capacity refusals, the scale diff, the status table; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.filter.day2_batches import day2_batches
from ansible_collections.openfuyao.pd.plugins.filter.day2_diff import day2_diff
from ansible_collections.openfuyao.pd.plugins.filter.day2_status import day2_status
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_day2

ROOT = Path(__file__).resolve().parents[2]


def inst(name: str, role: str, port: int, host: str = "h1", address: str = "10.0.0.1") -> dict[str, Any]:
    return {"name": name, "role": role, "host": host, "address": address, "http_port": port,
            "health_url": f"http://{address}:{port}/health", "devices": [0, 1] if role == "prefill" else [2, 3],
            "ports": [{"start": port, "end": port, "purpose": "http"}]}


def plan(*instances: dict[str, Any]) -> dict[str, Any]:
    return {"schema_version": 1, "model": {"served_name": "m"}, "instances": list(instances),
            "proxy": {"host": "h0", "address": "10.0.0.9", "port": 9090, "protocol": "mooncake_v1"}}


P2D2 = plan(inst("prefill-0", "prefill", 8100), inst("prefill-1", "prefill", 8101),
            inst("decode-0", "decode", 8200, "h2", "10.0.0.2"), inst("decode-1", "decode", 8201, "h2", "10.0.0.2"))


def test_batches_decode_first_then_prefill_one_at_a_time() -> None:
    out = pd_day2.batches({"plan": P2D2, "roles": ["decode", "prefill", "proxy"], "max_unavailable": 1,
                           "min_available": {"prefill": 1, "decode": 1}})
    assert out["error"] is None
    assert [[i["name"] for i in b["instances"]] for b in out["batches"]] == [
        ["decode-0"], ["decode-1"], ["prefill-0"], ["prefill-1"]]


def test_batches_never_below_the_minimum() -> None:
    # max_unavailable 5 with 2 instances and a minimum of 1: still one at a time
    out = pd_day2.batches({"plan": P2D2, "roles": ["decode"], "max_unavailable": 5,
                           "min_available": {"decode": 1}})
    assert [len(b["instances"]) for b in out["batches"]] == [1, 1]
    out = pd_day2.batches({"plan": P2D2, "roles": ["decode"], "max_unavailable": 2,
                           "min_available": {"decode": 0}})
    assert [len(b["instances"]) for b in out["batches"]] == [2]


def test_batches_refuse_a_single_instance_role() -> None:
    one = plan(inst("prefill-0", "prefill", 8100), inst("decode-0", "decode", 8200))
    out = pd_day2.batches({"plan": one, "roles": ["decode", "prefill"], "max_unavailable": 1,
                           "min_available": {"prefill": 0, "decode": 1}})
    assert out["error"].startswith("role decode has 1 instance(s) and day2_min_available_decode=1")
    # prefill may go to zero (the proxy prefills on decode meanwhile) when the operator says so
    assert [b["role"] for b in out["batches"]] == ["prefill"]


def test_batches_only_and_unknown_names() -> None:
    out = pd_day2.batches({"plan": P2D2, "roles": ["decode", "prefill"], "max_unavailable": 1,
                           "min_available": {}, "only": ["decode-1", "nope-9"]})
    assert [[i["name"] for i in b["instances"]] for b in out["batches"]] == [["decode-1"]]
    assert "day2_only_instances names nope-9" in out["error"]


def live(*items: tuple[str, str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "role": r, "url": u, "healthy": True, "ejected": False, "draining": False,
             "inflight_requests": 0} for n, r, u in items]


def test_diff_added_removed_kept_by_endpoint() -> None:
    running = live(("prefill-0", "prefill", "http://10.0.0.1:8100"), ("decode-0", "decode", "http://10.0.0.2:8200"),
                   ("decode-9", "decode", "http://10.0.0.7:8200"))
    new = plan(inst("prefill-0", "prefill", 8100), inst("decode-0", "decode", 8200, "h2", "10.0.0.2"),
               inst("decode-1", "decode", 8201, "h2", "10.0.0.2"))
    out = pd_day2.diff({"plan": new, "live": running})
    assert [i["name"] for i in out["added"]] == ["decode-1"]
    assert [b["name"] for b in out["removed"]] == ["decode-9"]
    assert out["kept"] == ["prefill-0", "decode-0"]
    assert out["error"] is None and out["changed"]
    assert out["lines"][0].startswith("+ decode-1") and out["lines"][1].startswith("- decode-9")


def test_diff_says_which_kept_instances_restart_and_why() -> None:
    running = live(("prefill-0", "prefill", "http://10.0.0.1:8100"), ("decode-0", "decode", "http://10.0.0.1:8200"),
                   ("decode-1", "decode", "http://10.0.0.2:8200"))
    new = plan(inst("prefill-0", "prefill", 8100), inst("prefill-1", "prefill", 8101),
               inst("decode-0", "decode", 8200), inst("decode-1", "decode", 8200, "h2", "10.0.0.2"))
    # The deploy role's check-mode answer: prefill-1 is new, decode-0's env changes (same host
    # as the added prefill), decode-1's files differ but its host gains nothing.
    changed = {"prefill-1": ["env", "run.sh"], "decode-0": ["env"], "decode-1": ["kv_transfer.json"]}
    out = pd_day2.diff({"plan": new, "live": running, "would_change": changed})
    assert out["restarts"] == ["decode-0"] and out["changed"]
    lines = {line.split()[1]: line for line in out["lines"]}
    assert lines["prefill-1"].startswith("+ ") and lines["prefill-1"].endswith("starts (new)")
    assert lines["decode-0"].startswith("~ ") and lines["decode-0"].endswith("restarts: its env change")
    assert lines["prefill-0"].startswith("= ") and lines["prefill-0"].endswith("untouched: its files are unchanged")
    assert lines["decode-1"].startswith("= ") and "its host gains no instance" in lines["decode-1"]
    # Nothing would change: no restart.
    out = pd_day2.diff({"plan": new, "live": running, "would_change": {"prefill-1": ["env"]}})
    assert out["restarts"] == [] and all(not line.startswith("~") for line in out["lines"])


def test_diff_refuses_renames_and_empty_roles() -> None:
    running = live(("decode-1", "decode", "http://10.0.0.2:8200"), ("prefill-0", "prefill", "http://10.0.0.1:8100"))
    new = plan(inst("prefill-0", "prefill", 8100), inst("decode-0", "decode", 8200, "h2", "10.0.0.2"))
    out = pd_day2.diff({"plan": new, "live": running})
    assert "renames running instances (decode-1 -> decode-0)" in out["error"]
    out = pd_day2.diff({"plan": plan(inst("decode-0", "decode", 8200)), "live": []})
    assert "the new plan has no prefill instance" in out["error"]


def test_diff_ipv6_endpoints_match_the_proxy_urls() -> None:
    new = plan(inst("prefill-0", "prefill", 8100, address="fd00::1"), inst("decode-0", "decode", 8200, address="fd00::2"))
    running = live(("prefill-0", "prefill", "http://[fd00::1]:8100"), ("decode-0", "decode", "http://[fd00::2]:8200"))
    out = pd_day2.diff({"plan": new, "live": running})
    assert not out["changed"] and out["error"] is None


def test_status_names_a_crash_looping_instance() -> None:
    fatal = {**probe_ok("decode-1"), "state": "FATAL", "pid": None, "health": "connection refused",
             "detail": "Exited too quickly (process log may have details)", "restarts": 6,
             "last_exit": "exit status 75 at 2026-12-02 01:03:00"}
    probes = {"h1": {"instances": [probe_ok("prefill-0"), probe_ok("prefill-1")]},
              "h2": {"instances": [{**probe_ok("decode-0"), "restarts": 1,
                                    "last_exit": "terminated by SIGKILL at 2026-12-02 01:01:00"}, fatal]}}
    out = pd_day2.status({"plan": P2D2, "probes": probes, "proxy": {"health": {"status": "ok"}, "instances": []}})
    problems = "\n".join(out["problems"])
    assert ("decode-1 on h2: service is FATAL (Exited too quickly (process log may have details)): crash loop, "
            "the supervisor gave up after 6 restart(s), last exit: exit status 75 at 2026-12-02 01:03:00") in problems
    row = next(line for line in out["table"].splitlines() if " decode-0 " in line)
    assert " RUNNING  1 " in row and "SIGKILL@01:01:00" in row


def test_status_names_a_kv_stuck_instance_from_the_watchdog() -> None:
    probes = {"h2": {"instances": [{**probe_ok("decode-0"), "kv_stuck": True, "kv_usage": 0.9}, probe_ok("decode-1")]}}
    proxy = {"instances": live(("decode-0", "decode", "http://10.0.0.2:8200")), "health": {"status": "ok"}}
    out = pd_day2.status({"plan": P2D2, "probes": probes, "proxy": proxy})
    problems = "\n".join(out["problems"])
    assert "decode-0 on h2: KV cache stuck at 0.9 with no request (KV watchdog)" in problems
    assert "decode-1 on h2: KV cache stuck" not in problems
    assert "kv-stuck" in next(line for line in out["table"].splitlines() if " decode-0 " in line)


def probe_ok(name: str) -> dict[str, Any]:
    return {"name": name, "health": "ok", "models": ["m"], "version": "0.11.0", "state": "RUNNING",
            "pid": 1, "uptime": "0:01:00"}


def test_status_table_and_problems() -> None:
    probes = {
        "h1": {"instances": [probe_ok("prefill-0"), {**probe_ok("prefill-1"), "health": "connection refused",
                                                      "state": "STOPPED", "pid": None}],
               "packages": {"vllm": "0.11.0", "mooncake-transfer-engine": "0.3.13"}},
        "h2": {"instances": [probe_ok("decode-0"), {**probe_ok("decode-1"), "models": ["other"]}],
               "packages": {"vllm": "0.10.2", "mooncake-transfer-engine": "0.3.13"}},
    }
    proxy = {"instances": live(("prefill-0", "prefill", "http://10.0.0.1:8100"),
                               ("decode-0", "decode", "http://10.0.0.2:8200"),
                               ("decode-1", "decode", "http://10.0.0.2:8201"),
                               ("decode-7", "decode", "http://10.0.0.5:8200")),
             "health": {"status": "ok"}, "state": "RUNNING", "uptime": "1:00:00"}
    proxy["instances"][1]["ejected"] = True
    out = pd_day2.status({"plan": P2D2, "probes": probes, "proxy": proxy})
    table = out["table"]
    assert table.splitlines()[0].split() == ["HOST", "INSTANCE", "ROLE", "DEVICES", "PORTS", "SERVICE", "RESTARTS",
                                             "LAST", "EXIT", "HEALTH", "MODEL", "VERSION", "STACK", "UPTIME",
                                             "PROXY", "VIEW"]
    row = next(line for line in table.splitlines() if " prefill-0 " in line)
    assert "0,1" in row and "http:8100" in row and "mooncake-transfer-engine=0.3.13,vllm=0.11.0" in row
    problems = "\n".join(out["problems"])
    assert "prefill-1 on h1: service is STOPPED" in problems
    assert "prefill-1 on h1: /health connection refused" in problems
    assert "prefill-1: the proxy does not route to it" in problems
    assert "decode-0: proxy marks it ejected" in problems
    assert "decode-1 on h2: serves ['other'], the plan says m" in problems
    assert "proxy routes to decode-7 (http://10.0.0.5:8200) which the plan does not have" in problems
    assert "package vllm differs between hosts (0.10.2, 0.11.0)" in problems
    assert "mooncake" not in problems  # same version everywhere
    assert f"PROBLEMS ({len(out['problems'])}):" in table


def test_status_unreachable_proxy_and_unprobed_host() -> None:
    out = pd_day2.status({"plan": P2D2, "probes": {"h1": {"instances": [probe_ok("prefill-0"), probe_ok("prefill-1")]}},
                          "proxy": {"error": "no answer at http://10.0.0.9:9090 (Connection refused)"}})
    problems = "\n".join(out["problems"])
    assert "decode-0 on h2: host not probed" in problems
    assert "proxy on h0: no answer at http://10.0.0.9:9090" in problems


def test_the_filters_give_what_the_functions_give() -> None:
    out = day2_batches(P2D2, ["decode"], 1, {"decode": 1}, ["decode-1"])
    assert out == {"batches": [{"role": "decode", "instances": [
        {k: P2D2["instances"][3][k] for k in ("name", "host", "role", "health_url", "address", "http_port")}]}],
        "error": None}
    # the playbooks pass numbers templated from strings and no optional arguments
    assert day2_batches(P2D2, ["decode", "prefill"], "2", {"decode": "0"})["error"] is None
    running = live(("prefill-0", "prefill", "http://10.0.0.1:8100"))
    assert day2_diff(P2D2, running) == pd_day2.diff({"plan": P2D2, "live": running})
    # scale.yml's "NAME:FILE" entries: prefill-0's host gains prefill-1, so its changed env restarts it
    lines = day2_diff(P2D2, running, ["prefill-0:env", "prefill-0:run.sh"])["lines"]
    assert lines[-1] == "~ prefill-0    prefill  h1 http://10.0.0.1:8100  restarts: its env, run.sh change"
    assert day2_status(P2D2)["problems"] == pd_day2.status({"plan": P2D2})["problems"]


@pytest.mark.parametrize(("call", "why"), [
    (lambda: day2_batches(None, ["decode"]), "openfuyao.pd.day2_batches: its input must be pd_plan (a mapping"),
    (lambda: day2_batches({"instances": [{"name": "x"}]}, ["decode"]),
     "openfuyao.pd.day2_batches: bad input (KeyError: 'role'); pass pd_plan as playbooks/plan.yml computes it"),
    (lambda: day2_batches(P2D2, ["decode"], "many"), "openfuyao.pd.day2_batches: bad input (ValueError"),
    (lambda: day2_diff("plan", []), "openfuyao.pd.day2_diff: its input must be pd_plan"),
    (lambda: day2_diff({"instances": [{"role": "decode"}]}, []), "openfuyao.pd.day2_diff: bad input (KeyError: 'address')"),
    (lambda: day2_status({"instances": [{"name": "x"}]}), "openfuyao.pd.day2_status: bad input (KeyError: 'host')"),
])
def test_bad_input_is_one_line_naming_the_filter_and_the_fix(call: Any, why: str) -> None:
    with pytest.raises(AnsibleFilterError) as err:
        call()
    assert str(err.value).startswith(why) and "\n" not in str(err.value)


def test_ansible_resolves_the_day2_filters_by_fqcn() -> None:
    """Through Ansible's own templating, with the plan as a variable (lazy containers, not plain dicts)."""
    expr = ("{{ {'b': (p | openfuyao.pd.day2_batches(['decode'], 1, {'decode': 1})).batches | length, "
            "'d': (p | openfuyao.pd.day2_diff([], ['decode-0:env'])).lines | length, "
            "'s': (p | openfuyao.pd.day2_status({}, {'error': 'down'})).problems[-1]} | to_json }}")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.debug",
                          "-a", f"msg={expr}", "-e", json.dumps({"p": P2D2})],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    msg = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    value = json.loads(msg) if isinstance(msg, str) else msg
    assert value == {"b": 2, "d": 4, "s": "proxy on h0: down"}
