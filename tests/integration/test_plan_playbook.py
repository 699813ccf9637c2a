"""playbooks/plan.yml against every shipped inventory: real ansible-playbook runs that write
the plan JSON, plus a broken inventory (one clear line per problem, no traceback) and
--check (nothing written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ["local", "ascend-1p1d", "ascend-2p2d", "ascend-8p8d", "ucm-xpyd", "hetero-ucm", "ascend-layerwise", "ascend-store"]
INSTANCE_KEYS = {
    "name",
    "host",
    "role",
    "devices",
    "tensor_parallel_size",
    "data_parallel_size",
    "http_port",
    "kv_port",
    "ports",
    "engine_id",
    "kv_transfer_config",
    "argv",
    "env",
}


def run_playbook(inventory: Path, *extra: str, playbook: str = "plan.yml") -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        ["ansible-playbook", str(ROOT / "playbooks" / playbook), "-i", str(inventory), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", INVENTORIES)
def test_plan_playbook_writes_plan(name, tmp_path):
    out = tmp_path / "plan.json"
    result = run_playbook(ROOT / "inventories" / name / "cluster.ini", "-e", f"pd_plan_output={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(out.read_text())
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert plan["schema_version"] == 2
    assert plan["instances"]
    for inst in plan["instances"]:
        assert set(inst) >= INSTANCE_KEYS, INSTANCE_KEYS - set(inst)
        assert inst["argv"] and all(isinstance(a, str) for a in inst["argv"])
        assert all(isinstance(v, str) for v in inst["env"].values())
    for role in ("prefill", "decode"):
        backends = plan["proxy"][role]
        assert backends and all({"host", "port"} <= set(b) for b in backends)
        assert [b["port"] for b in backends] == [
            i["http_port"] for i in plan["instances"] if i["role"] == role
        ]
    # The table is printed: one line per instance with its engine id.
    for inst in plan["instances"]:
        assert any(
            inst["name"] in line and line.rstrip().endswith(inst["engine_id"])
            for line in result.stdout.splitlines()
        )
    # Second run: same plan, nothing changes.
    again = run_playbook(ROOT / "inventories" / name / "cluster.ini", "-e", f"pd_plan_output={out}")
    assert again.returncode == 0 and "changed=0" in again.stdout
    assert json.loads(out.read_text()) == plan


@pytest.mark.parametrize(("pin", "pool"), [("0.3.7.post2", (20000, 20999)), ("0.3.9", (20000, 20099))])
def test_mooncake_role_pin_sizes_the_ascend_direct_pools(pin, pool, tmp_path):
    # The action hands the mooncake role's mooncake_version to the planner (pd_mooncake_version unset).
    out = tmp_path / "plan.json"
    result = run_playbook(
        ROOT / "inventories" / "ascend-1p1d" / "cluster.ini",
        "-e", f"pd_plan_output={out}", "-e", f"mooncake_version={pin}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    prefill = next(i for i in json.loads(out.read_text())["instances"] if i["role"] == "prefill")
    device0 = next(p for p in prefill["ports"] if p["purpose"] == "ascend direct transfer device 0 (random)")
    assert (device0["start"], device0["end"]) == pool


def test_check_mode_writes_nothing(tmp_path):
    out = tmp_path / "plan.json"
    result = run_playbook(
        ROOT / "inventories" / "local" / "cluster.ini", "--check", "-e", f"pd_plan_output={out}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not out.exists()


def test_broken_inventory_fails_with_one_line_each(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text(
        "[prefill]\nn1 ansible_connection=local pd_platform=ascend pd_model=/m pd_prefill_tp=1 pd_decode_tp=2\n"
        "[decode]\nn1\n[proxy]\nn1 pd_proxy_port=8100 pd_prefil_dp=2\n"
    )
    out = tmp_path / "plan.json"
    result = run_playbook(inv, "-e", f"pd_plan_output={out}")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in text
    assert "prefill tp 1 (prefill-0 on n1) < decode tp 2 (decode-0 on n1) with connector mooncake" in text
    assert "port clash: prefill-0 http 8100 overlaps proxy http 8100: change pd_proxy_port" in text
    assert not out.exists()


def test_untemplatable_variable_is_one_line(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text(
        '[prefill]\nlocalhost ansible_connection=local pd_model="{{ nope_undefined }}"\n[decode]\nlocalhost\n'
        "[proxy]\nlocalhost\n"
    )
    result = run_playbook(inv, "-e", f"pd_plan_output={tmp_path / 'plan.json'}")
    assert result.returncode != 0
    assert (
        "host localhost: variable pd_model cannot be templated: 'nope_undefined' is undefined"
        in result.stdout + result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr


# ---------------------------------------------------------------- broken inventories, real runs

ERROR_HEAD = "[ERROR]: Task failed: Action failed: "


def problem_lines(text: str) -> list[str]:
    """The problems exactly as Ansible prints the failed task's msg: the [ERROR] line carries the
    first, each further one is a line of its own, up to Ansible's Origin: line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(ERROR_HEAD))
    out = [lines[start][len(ERROR_HEAD):]]
    for line in lines[start + 1 :]:
        if line.startswith("Origin: "):
            break
        out.append(line)
    return out


def assert_refused(result: subprocess.CompletedProcess, expected: list[str], plan: Path) -> None:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text
    assert problem_lines(text) == expected, text
    assert not plan.exists()


def seeded(path: Path) -> Path:
    """A plan file from an earlier, successful run: it must not survive a failed one."""
    path.write_text('{"schema_version": 1, "stale": true}\n')
    return path


def test_capitalised_groups_fail_naming_the_groups_found(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text("[Prefill]\nn1 ansible_host=10.0.0.1\n[Decode]\nn1\n[Proxy]\nn1\n")
    plan = seeded(tmp_path / "plan.json")
    result = run_playbook(inv, "-e", f"pd_plan_output={plan}")
    assert_refused(
        result,
        [
            f"group {g} is empty: add at least one host under [{g}] in the inventory (the inventory has a group "
            f"[{g.capitalize()}]: rename it; group names are case-sensitive); groups found: Decode, Prefill, Proxy"
            for g in ("prefill", "decode", "proxy")
        ],
        plan,
    )
    assert f"no plan written ({plan} does not exist now): fix the problems listed above" in result.stdout


def test_yaml_inventory_in_the_wrong_shape_fails(tmp_path):
    inv = tmp_path / "cluster.yml"
    # Groups as keys of `all` instead of under `all: children:`: Ansible only warns and skips them.
    inv.write_text("all:\n  prefill:\n    hosts: {n1: {}}\n  decode:\n    hosts: {n1: {}}\n  proxy:\n    hosts: {n1: {}}\n")
    plan = seeded(tmp_path / "plan.json")
    assert_refused(
        run_playbook(inv, "-e", f"pd_plan_output={plan}"),
        [
            f"group {g} is empty: add at least one host under [{g}] in the inventory; the inventory has no hosts "
            "at all: check that it parses (ansible-inventory -i INVENTORY --graph) and that YAML groups sit under "
            "all: children:"
            for g in ("prefill", "decode", "proxy")
        ],
        plan,
    )


def test_host_vars_file_that_is_not_yaml_is_named(tmp_path):
    (tmp_path / "host_vars").mkdir()
    broken = tmp_path / "host_vars" / "d1.yml"
    broken.write_text("pd_model: /m\npd_decode_tp: [1\n")
    inv = tmp_path / "cluster.ini"
    inv.write_text("[prefill]\np1 ansible_host=10.0.0.1\n[decode]\nd1 ansible_host=10.0.0.2\n[proxy]\np1\n")
    plan = seeded(tmp_path / "plan.json")
    assert_refused(
        run_playbook(inv, "-e", f"pd_plan_output={plan}"),
        [
            f"host d1: its variables cannot be loaded from {broken}:3: YAML parsing failed: While parsing a flow "
            "sequence did not find expected ',' or ']'.: fix that file"
        ],
        plan,
    )


def test_failed_replan_removes_the_plan_of_the_good_run(tmp_path):
    inv = tmp_path / "cluster.ini"
    good = "[prefill]\nlocalhost ansible_connection=local\n[decode]\nlocalhost\n[proxy]\nlocalhost\n[all:vars]\npd_model=/m\n"
    inv.write_text(good)
    plan = tmp_path / "plan.json"
    assert run_playbook(inv, "-e", f"pd_plan_output={plan}").returncode == 0
    assert json.loads(plan.read_text())["instances"]
    inv.write_text(good + "pd_prefill_max_num_seqs=many\n")
    assert_refused(
        run_playbook(inv, "-e", f"pd_plan_output={plan}"),
        ["host localhost: pd_prefill_max_num_seqs='many' must be an integer >= 1"],
        plan,
    )


def test_group_mistake_on_sixteen_hosts_is_one_line(tmp_path):
    inv = tmp_path / "cluster.ini"
    shutil.copytree(ROOT / "inventories" / "ascend-8p8d", tmp_path, dirs_exist_ok=True)
    with (tmp_path / "group_vars" / "decode.yml").open("a") as f:
        f.write("pd_decode_env: {CUDA_VISIBLE_DEVICES: '0'}\n")
    plan = tmp_path / "plan.json"
    decode = ", ".join(f"a2-d{i:02d}" for i in range(1, 9))
    assert_refused(
        run_playbook(inv, "-e", f"pd_plan_output={plan}"),
        [
            f"hosts {decode}: pd_decode_env sets CUDA_VISIBLE_DEVICES, which the plan owns: remove it and set "
            "pd_decode_devices instead"
        ],
        plan,
    )


def test_ini_false_reaches_the_proxy_as_false(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text(
        "[prefill]\nlocalhost ansible_connection=local\n[decode]\nlocalhost\n[proxy]\nlocalhost\n"
        "[all:vars]\npd_model=/m\npd_proxy_fallback_local_prefill=false\npd_proxy_health_interval=2\n"
    )
    plan = tmp_path / "plan.json"
    result = run_playbook(inv, "-e", f"pd_plan_output={plan}")
    assert result.returncode == 0, result.stdout + result.stderr
    options = json.loads(plan.read_text())["proxy"]["options"]
    assert options["fallback_local_prefill"] is False and options["health_interval"] == 2


def test_site_refuses_misspelled_groups_before_contacting_a_host(tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text("[prefill]\nn1 ansible_host=192.0.2.1\n[decode]\nn1\n[proxxy]\nn1\n")
    result = run_playbook(inv, playbook="site.yml")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert problem_lines(text) == [
        "group proxy is empty: add at least one host under [proxy] in the inventory (the inventory has a group "
        "[proxxy]: rename it); groups found: decode, prefill, proxxy"
    ]
    assert "PLAY [Reach every host of the deployment]" not in text


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs an ssh client to be refused")
def test_site_stops_when_a_host_is_unreachable(tmp_path):
    inv = tmp_path / "cluster.ini"
    # d1: ssh to a loopback port nothing listens on, refused at once.
    inv.write_text(
        f'[prefill]\np1 ansible_connection=local ansible_python_interpreter={sys.executable}\n'
        "[decode]\nd1 ansible_host=127.0.0.2 ansible_port=1\n[proxy]\np1\n"
        "[all:vars]\npd_model=builtin:tiny-llama\npd_proxy_port=9390\n"
    )
    result = run_playbook(inv, playbook="site.yml")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert problem_lines(text) == [
        "hosts d1 failed or did not answer: stopping before anything is deployed; fix them, or rerun with "
        "-e pd_allow_partial=true to go on without them"
    ]
    # Nothing after the gate ran: no facts, no plan, no preflight, no deployment.
    for play in ("Learn the NPUs", "Plan the layout once", "Check the hosts against the plan", "Start the"):
        assert f"PLAY [{play}" not in text


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs an ssh client to be refused")
@pytest.mark.parametrize("allow", [False, True])
def test_partial_cluster_gate_goes_on_only_when_asked(tmp_path, allow):
    """playbooks/tasks/gate.yml in a play of its own: without pd_allow_partial the run stops,
    with it the hosts that answered go on (and only they)."""
    inv = tmp_path / "cluster.ini"
    inv.write_text(
        f"[prefill]\np1 ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        "[decode]\nd1 ansible_host=127.0.0.2 ansible_port=1\n"
    )
    book = tmp_path / "gate.yml"
    book.write_text(
        "- hosts: prefill:decode\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.ping:\n"
        f"    - ansible.builtin.import_tasks: {ROOT / 'playbooks' / 'tasks' / 'gate.yml'}\n"
        "      vars: {_pd_gate_before: the test step}\n"
        "    - ansible.builtin.debug: {msg: 'went on on {{ inventory_hostname }}'}\n"
    )
    extra = ("-e", "pd_allow_partial=true") if allow else ()
    result = run_playbook(inv, *extra, playbook=str(book))
    text = result.stdout + result.stderr
    assert result.returncode != 0  # d1 stays unreachable either way
    if allow:
        assert "went on on p1" in text and "failed or did not answer" not in text
    else:
        assert problem_lines(text) == [
            "hosts d1 failed or did not answer: stopping before the test step; fix them, or rerun with "
            "-e pd_allow_partial=true to go on without them"
        ]
        assert "went on on" not in text


@pytest.fixture(scope="module")
def local_plan(tmp_path_factory) -> str:
    """The plan playbooks/plan.yml writes for inventories/local."""
    plan = tmp_path_factory.mktemp("local-plan") / "plan.json"
    assert run_playbook(ROOT / "inventories" / "local" / "cluster.ini", "-e", f"pd_plan_output={plan}").returncode == 0
    return plan.read_text()


PLAYBOOKS_WITH_THE_PLAN = ["site.yml", "verify.yml", "bench.yml", "status.yml", "rolling_restart.yml",
                           "upgrade.yml", "scale.yml"]


def _imports(playbook: str) -> list[str]:
    import yaml

    plays = yaml.safe_load((ROOT / "playbooks" / playbook).read_text())
    return [p["ansible.builtin.import_playbook"] for p in plays if "ansible.builtin.import_playbook" in p]


@pytest.mark.parametrize("playbook", PLAYBOOKS_WITH_THE_PLAN)
def test_every_playbook_plans_through_the_one_plan_play(playbook):
    """One planning play (plan_gate.yml), imported after the inventory check; no copy of it elsewhere."""
    imports = _imports(playbook)
    assert imports[0] == "inventory_check.yml"
    assert "plan_gate.yml" in imports
    # Neither the planner nor the plan file is called anywhere else: plan_gate.yml is the only copy.
    text = (ROOT / "playbooks" / playbook).read_text()
    assert "openfuyao.pd.pd_plan:" not in text and "lookup('ansible.builtin.file', pd_plan_file)" not in text


def _site_plan_play(tmp_path: Path, *after: str) -> Path:
    """site.yml's plan play (the play that applies pd_plan_file, imported from plan_gate.yml), runnable
    from tmp_path, followed by plays over the deployment's hosts that run the tasks ``after``."""
    import yaml

    plays = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    (play,) = [p for p in plays if p.get("name") == "Plan the layout once and publish it to every host"]
    assert play["ansible.builtin.import_playbook"] == "plan_gate.yml"
    book = [{"ansible.builtin.import_playbook": str(ROOT / "playbooks" / "plan_gate.yml")}]
    for task in after:
        book.append({"name": "After the plan", "hosts": "prefill:decode:proxy", "gather_facts": False,
                     "tasks": [yaml.safe_load(task)]})
    path = tmp_path / "site_plan_play.yml"
    path.write_text(yaml.safe_dump(book, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"schema_version": 3}', "is not a plan (schema_version 2) of this inventory: schema_version is 3, "
         "this collection reads 2; write it again with playbooks/plan.yml on this inventory"),
        ('{"schema_version": 1}', "is a schema 1 plan, this collection reads schema 2 (it adds hosts' dirs and "
         "services, typed port claims and the instance and proxy URLs): re-run playbooks/plan.yml on this "
         "inventory and review the new file"),
        ("[1, 2]", "is not a plan (schema_version 2) of this inventory: it holds an array, not an object; write it "
         "again with playbooks/plan.yml on this inventory"),
        (None, "is not a plan (schema_version 2) of this inventory: hosts a2-p01 are not in it; write it again "
         "with playbooks/plan.yml on this inventory"),
        ("good", None),
    ],
    ids=["other-schema", "schema-1", "not-a-mapping", "other-inventory", "good"],
)
def test_site_refuses_a_plan_file_that_is_not_of_this_inventory(tmp_path, local_plan, content, expected):
    inventory = ROOT / "inventories" / "local" / "cluster.ini"
    plan = tmp_path / "plan.json"
    plan.write_text(local_plan)
    if content is None:
        doc = json.loads(plan.read_text())
        doc["hosts"]["a2-p01"] = doc["hosts"]["localhost"]
        plan.write_text(json.dumps(doc))
    elif content != "good":
        plan.write_text(content)
    result = run_playbook(inventory, "-e", f"pd_plan_file={plan}", playbook=str(_site_plan_play(tmp_path)))
    text = result.stdout + result.stderr
    if expected is None:
        assert result.returncode == 0, text
    else:
        assert result.returncode != 0
        assert problem_lines(text) == [f"pd_plan_file={plan} {expected}"]


def words(text: str) -> str:
    """The output with ansible's line wrapping of long messages undone."""
    return " ".join(text.split())


def show_plan(out: Path) -> str:
    """A task that writes the pd_plan each host holds to out/<host>.json on the controller."""
    out.mkdir(exist_ok=True)
    return (
        "{name: Write the plan this host holds, ansible.builtin.copy: {content: '{{ pd_plan | to_json }}', "
        f"dest: '{out}/{{{{ inventory_hostname }}}}.json', mode: '0600'}}, delegate_to: localhost, "
        "vars: {ansible_python_interpreter: '{{ ansible_playbook_python }}'}}"
    )


def applied_plans(out: Path) -> dict[str, dict]:
    """The pd_plan each host held (show_plan), by host."""
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")} if out.exists() else {}


@pytest.fixture(scope="module")
def multihost_plan(tmp_path_factory) -> str:
    """The plan playbooks/plan.yml writes for inventories/ascend-2p2d (four hosts, no facts)."""
    plan = tmp_path_factory.mktemp("2p2d-plan") / "plan.json"
    result = run_playbook(ROOT / "inventories" / "ascend-2p2d" / "cluster.ini", "-e", f"pd_plan_output={plan}")
    assert result.returncode == 0, result.stdout + result.stderr
    return plan.read_text()


def test_reviewed_plan_file_is_applied_to_every_host(tmp_path, multihost_plan):
    inventory = ROOT / "inventories" / "ascend-2p2d" / "cluster.ini"
    plan, out = tmp_path / "reviewed.json", tmp_path / "applied"
    plan.write_text(multihost_plan)
    result = run_playbook(inventory, "-e", f"pd_plan_file={plan}",
                          playbook=str(_site_plan_play(tmp_path, show_plan(out))))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "Traceback" not in text and "differs from the plan" not in text and "[WARNING]" not in text
    hosts = json.loads(multihost_plan)["hosts"]
    assert applied_plans(out) == {h: json.loads(multihost_plan) for h in hosts}


def test_tampered_plan_file_is_applied_with_one_warning(tmp_path, multihost_plan):
    """A reviewed file edited by hand (a port, an instance's env) is what is applied, and the one
    warning says where it parts from the inventory's plan."""
    inventory = ROOT / "inventories" / "ascend-2p2d" / "cluster.ini"
    doc = json.loads(multihost_plan)
    inst = doc["instances"][0]
    original_port = inst["http_port"]
    inst["http_port"] = original_port + 7
    inst["env"]["EXTRA"] = "1"
    plan, out = tmp_path / "tampered.json", tmp_path / "applied"
    plan.write_text(json.dumps(doc))
    result = run_playbook(inventory, "-e", f"pd_plan_file={plan}", playbook=str(_site_plan_play(tmp_path, show_plan(out))))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "Traceback" not in text
    name = inst["name"]
    assert (
        f"[WARNING]: pd_plan_file={plan} differs from the plan of the current inventory in 2 places: "
        f"instances[{name}].env.EXTRA only in the file; instances[{name}].http_port: file {original_port + 7}, "
        f"inventory {original_port}. The file is applied as reviewed; to apply the inventory instead, review and "
        "write it again with playbooks/plan.yml, or run without pd_plan_file"
    ) in words(text)
    assert words(text).count("differs from the plan of the current inventory") == 1
    applied = applied_plans(out)
    assert set(applied) == set(doc["hosts"])
    assert all(p == doc for p in applied.values())


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda d: d.pop("proxy"), "section proxy is missing"),
        (lambda d: d["instances"][0].update(http_port="8100"), "instances[0].http_port must be an integer, it is a string"),
        (lambda d: d["hosts"].update({"a2-x09": {}}), "hosts a2-x09 are not in it"),
    ],
    ids=["missing-section", "wrong-type", "other-hosts"],
)
def test_tampered_plan_file_stops_every_host(tmp_path, multihost_plan, tamper, expected):
    inventory = ROOT / "inventories" / "ascend-2p2d" / "cluster.ini"
    doc = json.loads(multihost_plan)
    tamper(doc)
    plan, out = tmp_path / "tampered.json", tmp_path / "applied"
    plan.write_text(json.dumps(doc))
    result = run_playbook(inventory, "-e", f"pd_plan_file={plan}", playbook=str(_site_plan_play(tmp_path, show_plan(out))))
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in text
    assert problem_lines(text) == [
        f"pd_plan_file={plan} is not a plan (schema_version 2) of this inventory: {expected}; write it again with "
        "playbooks/plan.yml on this inventory"
    ]
    assert not applied_plans(out) and "PLAY [After the plan]" not in text


@pytest.mark.parametrize("content", [None, "{not json"], ids=["missing-file", "not-json"])
def test_unreadable_plan_file_is_one_line(tmp_path, content):
    plan, out = tmp_path / "plan.json", tmp_path / "applied"
    if content is not None:
        plan.write_text(content)
    result = run_playbook(ROOT / "inventories" / "local" / "cluster.ini", "-e", f"pd_plan_file={plan}",
                          playbook=str(_site_plan_play(tmp_path, show_plan(out))))
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in text
    expected = (
        f"pd_plan_file={plan} does not exist: give the path of the JSON that playbooks/plan.yml wrote "
        "(pd_plan_output, default ./pd_plan.json)"
        if content is None
        else f"pd_plan_file={plan} is not JSON (line 1 column 2: Expecting property name enclosed in double quotes); "
        "write it again with playbooks/plan.yml on this inventory"
    )
    assert problem_lines(text) == [expected]
    assert not applied_plans(out)
